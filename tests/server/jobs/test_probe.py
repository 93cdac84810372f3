"""The probe service vets files in long-lived child processes and survives every file.

Each way a file can go wrong in a probe (an error answer, a crash, garbage, a hang)
becomes InvalidVideo; a process the file broke is killed and replaced, and the next file
is served as usual.
"""

import asyncio
import os
import signal
import sys

import pytest

from protocol import VideoInfo
from server.config import Config
from server.jobs.probe import PROBE_FAILED, ProbeService
from server.state.models import InvalidVideo
from server.storage.files import StorageUnavailable
from tests.inference_worker.http_files import SIGNATURE_QUERY, serve_files
from tests.server.conftest import FAKE_PROBE, WAIT, dies, eventually, process_alive

FAKE_SERVICE = (sys.executable, str(FAKE_PROBE))
OK = VideoInfo("match.mp4", 12.5, 160, 120, 25.0, rotation=90, has_audio=True)


@pytest.fixture
async def make_service():
    """Factory: a started ProbeService over the fake probe; closed at the end of the test."""
    made: list[ProbeService] = []

    async def make(**options) -> ProbeService:
        options.setdefault("processes", 1)
        options.setdefault("timeout", Config.probe_timeout_seconds)
        service = ProbeService(options.pop("command", FAKE_SERVICE), **options)
        made.append(service)
        await service.start()
        return service

    yield make
    for service in made:
        await service.close()


@pytest.fixture
def files(tmp_path):
    """`files(mode)`: a file whose content tells the fake probe how to answer."""

    def write(mode: str):
        path = tmp_path / f"{mode}.mp4"
        path.write_text(f"{mode}\n")
        return path

    return write


async def test_one_process_answers_file_after_file(make_service, files):
    service = await make_service()
    [pid] = service.pids
    for _ in range(3):
        assert await service.probe(files("ok"), "match.mp4") == OK
    assert service.pids == [pid]


async def test_an_error_answer_is_invalid_video_with_the_probes_message(make_service, files):
    service = await make_service()
    [pid] = service.pids
    with pytest.raises(InvalidVideo, match="^No video stream found$"):
        await service.probe(files("invalid"), "match.mp4")
    assert service.pids == [pid], "a file the probe refused does not cost its process"


async def test_a_result_without_a_usable_video_is_invalid_video(make_service, files):
    service = await make_service()
    with pytest.raises(InvalidVideo, match=f"^{PROBE_FAILED}$"):
        await service.probe(files("bad_result"), "match.mp4")


@pytest.mark.parametrize("mode", ["crash", "garbage"])
async def test_a_file_that_breaks_the_probe_is_invalid_video_and_the_probe_is_replaced(
    make_service, files, mode
):
    service = await make_service()
    [old] = service.pids
    with pytest.raises(InvalidVideo, match=f"^{PROBE_FAILED}$"):
        await service.probe(files(mode), "match.mp4")
    assert await dies(old)
    assert await service.probe(files("ok"), "match.mp4") == OK
    assert service.pids and service.pids != [old]


@pytest.mark.parametrize(
    ("mode", "logged"),
    [
        ("internal", "internal_error: ZeroDivisionError"),
        ("crash", "probe exited with code 1: Traceback"),
    ],
)
async def test_a_probe_failure_is_logged_in_detail_and_shown_to_the_client_in_general(
    make_service, files, caplog, mode, logged
):
    """An unforeseen error's text or a crash's stderr tail goes to the log, not the client."""
    service = await make_service()
    with pytest.raises(InvalidVideo, match=f"^{PROBE_FAILED}$"):
        await service.probe(files(mode), "match.mp4")
    assert logged in caplog.text


async def test_a_hanging_probe_is_killed_replaced_and_reported_as_invalid_video(
    make_service, files
):
    service = await make_service(timeout=2)
    [old] = service.pids
    with pytest.raises(InvalidVideo, match="took longer than 2 s"):
        await asyncio.wait_for(service.probe(files("hang"), "match.mp4"), WAIT)
    assert await dies(old)
    assert await service.probe(files("ok"), "match.mp4") == OK


async def test_a_hanging_file_holds_up_only_its_own_process(make_service, files):
    """With two processes, other files are answered while one hangs."""
    service = await make_service(processes=2, timeout=WAIT)
    hanging = asyncio.ensure_future(service.probe(files("hang"), "match.mp4"))
    try:
        for _ in range(3):
            assert await asyncio.wait_for(service.probe(files("ok"), "match.mp4"), WAIT) == OK
    finally:
        hanging.cancel()
        await asyncio.gather(hanging, return_exceptions=True)


async def test_a_cancelled_request_costs_its_process_and_not_the_next_file(make_service, files):
    """The interrupted request's late answer must never be read as the next file's."""
    service = await make_service()
    [old] = service.pids
    hanging = asyncio.ensure_future(service.probe(files("hang"), "match.mp4"))
    await asyncio.sleep(0.2)
    hanging.cancel()
    await asyncio.gather(hanging, return_exceptions=True)
    assert await dies(old)
    assert await service.probe(files("ok"), "match.mp4") == OK


async def test_a_probe_that_died_while_idle_is_replaced_without_blaming_the_next_file(
    make_service, files
):
    service = await make_service()
    [old] = service.pids
    os.kill(old, signal.SIGKILL)
    assert await eventually(lambda: service.pids == []), "the service saw it die"
    assert await service.probe(files("ok"), "match.mp4") == OK


async def test_a_probe_that_cannot_start_is_not_blamed_on_the_video(make_service, files, tmp_path):
    service = await make_service(command=(str(tmp_path / "missing"),))
    assert service.pids == []
    with pytest.raises(OSError):
        await service.probe(files("ok"), "match.mp4")


async def test_close_ends_every_probe_process(make_service):
    service = await make_service(processes=2)
    pids = service.pids
    assert len(pids) == 2
    await service.close()
    assert not any(process_alive(pid) for pid in pids)


# The real probe process, reading uploads through URLs as from a bucket.


@pytest.fixture
async def bucket(aiohttp_server, tmp_path, sample_video):
    """`sample_video` as match.mp4, served on 127.0.0.1 with Range support."""
    directory = tmp_path / "bucket"
    directory.mkdir()
    (directory / "match.mp4").write_bytes(sample_video.read_bytes())
    return await serve_files(aiohttp_server, directory)


async def test_the_real_probe_reads_a_video_at_a_url_with_the_size_it_is_given(
    make_service, bucket, sample_video
):
    service = await make_service(command=Config.probe_command)
    size = sample_video.stat().st_size
    info = await service.probe(bucket.url("match.mp4"), "upload.mp4", size)
    assert info.filename == "upload.mp4"
    assert info.duration_seconds == pytest.approx(12.0, abs=0.05) and info.has_audio
    # The size reaches the probe: told the object is half as big, its index overruns it.
    with pytest.raises(InvalidVideo, match="truncated"):
        await service.probe(bucket.url("match.mp4"), "upload.mp4", size // 2)


async def test_a_url_the_real_probe_cannot_read_is_the_store_unavailable_and_logged(
    make_service, bucket, caplog
):
    """A 404 is the store's or the server's doing: not the file's message, nor its process;
    the upload is then a 503 to try again, not a 415."""
    service = await make_service(command=Config.probe_command)
    [pid] = service.pids
    with pytest.raises(StorageUnavailable, match="could not read the upload"):
        await service.probe(bucket.url("missing.mp4"), "match.mp4", 1000)
    assert "could not read the upload" in caplog.text and "404" in caplog.text
    assert SIGNATURE_QUERY not in caplog.text
    assert service.pids == [pid]
