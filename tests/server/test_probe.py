"""probe_video runs the probe in a child and turns every way it can go wrong into InvalidVideo."""

import asyncio
import sys

import pytest

from protocol import VideoInfo
from server.jobs.probe import UNREADABLE, probe_video
from server.state.models import InvalidVideo
from tests.server.conftest import FAKE_PROBE, WAIT, eventually, process_alive


def mimic(mode: str, *extra: str) -> tuple[str, ...]:
    return (sys.executable, str(FAKE_PROBE), mode, *extra)


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "upload.mp4"
    path.write_bytes(b"not really a video")
    return path


async def test_a_result_answer_becomes_the_video_info(video):
    info = await probe_video(video, "match.mp4", command_prefix=mimic("ok"))
    assert info == VideoInfo("match.mp4", 12.5, 160, 120, 25.0, rotation=90, has_audio=True)


async def test_an_error_answer_is_invalid_video_with_the_probes_message(video):
    with pytest.raises(InvalidVideo, match="^No video stream found$"):
        await probe_video(video, "match.mp4", command_prefix=mimic("invalid"))


async def test_a_result_without_a_usable_video_is_invalid_video(video):
    with pytest.raises(InvalidVideo, match=f"^{UNREADABLE}$"):
        await probe_video(video, "match.mp4", command_prefix=mimic("bad_result"))


async def test_a_crashing_probe_is_invalid_video_without_its_stderr(video, caplog):
    """The stderr tail goes to the log, never into the client's message."""
    with pytest.raises(InvalidVideo, match=f"^{UNREADABLE}$"):
        await probe_video(video, "match.mp4", command_prefix=mimic("crash"))
    assert "probe exited with code 1: Traceback" in caplog.text


async def test_a_probe_printing_garbage_is_invalid_video(video):
    with pytest.raises(InvalidVideo, match=f"^{UNREADABLE}$"):
        await probe_video(video, "match.mp4", command_prefix=mimic("garbage"))


async def test_a_hanging_probe_is_killed_and_reported_as_invalid_video(video, tmp_path):
    pid_file = tmp_path / "probe.pid"
    probing = asyncio.ensure_future(
        probe_video(
            video, "match.mp4", command_prefix=mimic("hang", "--pid-file", str(pid_file)), timeout=3
        )
    )
    assert await eventually(lambda: pid_file.exists() or probing.done())
    with pytest.raises(InvalidVideo, match="took longer than 3 s"):
        await asyncio.wait_for(probing, WAIT)
    assert not process_alive(int(pid_file.read_text()))


async def test_a_probe_that_cannot_start_is_not_blamed_on_the_video(video, tmp_path):
    with pytest.raises(OSError):
        await probe_video(video, "match.mp4", command_prefix=(str(tmp_path / "missing"),))
