"""POST /api/v1/video/upload: the happy paths, every rejection, and no file left behind."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

import aiohttp
import pytest

from server.storage.files import source_name
from server.web import app_keys as keys
from server.web import upload_flow
from server.web.multipart import safe_filename
from tests.media import (
    write_audio_only,
    write_still_image,
    write_text_file,
    write_truncated,
    write_zero_bytes,
)
from tests.server.http_helpers import (
    POLL_LIMIT_SECONDS,
    V1,
    files_under,
    finished,
    start,
    start_watching_route,
    upload,
    video_form,
)

# The whole v1 HTTP behaviour, on SQLite and on Redis.
pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await start(aiohttp_client, tmp_path)


async def test_upload_with_analysis_type_is_accepted_and_queued(client, sample_video):
    """202, a UUID4 session id, status pending, and Location pointing at the status URL."""
    response = await upload(client, sample_video, analysis_type="highlights")
    body = await response.json()
    assert response.status == 202
    assert body["status"] == "pending"
    assert body["message"] == "Video uploaded successfully, processing started"
    assert response.headers["Location"] == f"{V1}/status/{body['sessionId']}"
    assert (await finished(client, body["sessionId"])).status.value == "completed"


async def test_upload_without_analysis_type_waits_for_analyze(client, sample_video):
    """The two-step flow: the session stays `uploaded` until analyze is called."""
    response = await upload(client, sample_video)
    body = await response.json()
    assert response.status == 202 and body["status"] == "uploaded"
    status = await (await client.get(f"{V1}/status/{body['sessionId']}")).json()
    assert status["status"] == "uploaded" and status["analysisType"] is None


async def test_video_field_name_is_accepted_as_well_as_file(client, sample_video):
    response = await client.post(f"{V1}/upload", data=video_form(sample_video, field="video"))
    assert response.status == 202


async def test_form_fields_after_the_file_are_read(client, sample_video):
    """Clients differ in field order: analysis_type and params may follow the file part."""
    form = aiohttp.FormData()
    form.add_field("file", sample_video.read_bytes(), filename="clip.mp4")
    form.add_field("analysis_type", "workout")
    form.add_field("params", '{"segment_seconds": 5}')
    response = await client.post(f"{V1}/upload", data=form)
    body = await response.json()
    assert response.status == 202 and body["status"] == "pending"
    session = await finished(client, body["sessionId"])
    assert session.params["segment_seconds"] == 5.0


async def test_upload_is_stored_under_a_server_chosen_name(client, sample_video, tmp_path):
    """The client's filename is metadata only: a traversal name cannot pick the path."""
    response = await upload(client, sample_video, filename="../../../../etc/evil.MP4")
    session_id = (await response.json())["sessionId"]
    session = await client.app[keys.SESSIONS].get(session_id)
    stored = tmp_path / "data" / "uploads" / session_id / "source.mp4"
    assert session.upload_path == str(stored) and stored.is_file()
    assert session.video.filename == "evil.MP4"


@pytest.mark.parametrize(
    "raw, safe",
    [
        ("match.mp4", "match.mp4"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\clip.mov", "clip.mov"),
        ("..", "video"),
        ("", "video"),
        (None, "video"),
        ("bad\x00\x1b[31mname\u202e.mp4", "bad[31mname.mp4"),
        ("caf\udcc3.mp4", "caf.mp4"),
        (".hidden.mp4", "hidden.mp4"),
        ("x" * 500 + ".mp4", "x" * 116 + ".mp4"),
    ],
)
def test_client_filenames_are_sanitised(raw, safe):
    """Basename only, no control/format/surrogate characters, capped length, never empty."""
    assert safe_filename(raw) == safe


@pytest.mark.parametrize(
    "filename, stored",
    [("a.MP4", "source.mp4"), ("a.mov", "source.mov"), ("a", "source"), ("a.tar.g$z", "source")],
)
def test_stored_name_keeps_only_a_short_plain_extension(filename, stored):
    assert source_name(filename) == stored


# ---- rejections ---------------------------------------------------------------------------


async def assert_rejected(response, status: int, error: str | None = None) -> dict:
    body = await response.json()
    assert response.status == status, body
    assert body["code"] == status and isinstance(body["message"], str)
    if error is not None:
        assert body["error"] == error
    return body


async def test_no_file_is_a_400_and_leaves_nothing(client, tmp_path):
    form = aiohttp.FormData()
    form.add_field("analysis_type", "highlights")
    await assert_rejected(await client.post(f"{V1}/upload", data=form), 400, "No file")
    assert files_under(tmp_path / "data") == []


async def test_an_empty_file_field_without_a_name_is_no_file(client, tmp_path):
    """What a browser form sends when no file was chosen is a 400, not a bad video."""
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b""), filename="", content_type="application/octet-stream")
    await assert_rejected(await client.post(f"{V1}/upload", data=form), 400, "No file")
    assert files_under(tmp_path / "data") == []


async def test_a_body_that_is_not_multipart_is_a_400(client):
    response = await client.post(f"{V1}/upload", json={"analysis_type": "highlights"})
    await assert_rejected(response, 400, "No file")


async def test_two_files_are_a_400_and_leave_nothing(client, sample_video, tmp_path):
    form = video_form(sample_video)
    form.add_field("video", sample_video.read_bytes(), filename="second.mp4")
    await assert_rejected(await client.post(f"{V1}/upload", data=form), 400, "More than one file")
    assert files_under(tmp_path / "data") == []


async def test_params_that_are_not_json_are_a_400(client, sample_video, tmp_path):
    response = await upload(client, sample_video, analysis_type="highlights", params="{nope")
    body = await assert_rejected(response, 400, "Invalid parameters")
    assert "not valid JSON" in body["message"]
    assert files_under(tmp_path / "data") == []


async def test_unknown_params_are_a_400_naming_the_allowed_keys(client, sample_video, tmp_path):
    response = await upload(
        client, sample_video, analysis_type="workout", params='{"min_significance": 4}'
    )
    body = await assert_rejected(response, 400, "Invalid parameters")
    assert "allowed: exercise_hint, frames_per_segment, segment_seconds" in body["message"]
    assert files_under(tmp_path / "data") == []


async def test_unknown_analysis_type_is_a_400_naming_the_valid_ones(client, sample_video):
    response = await upload(client, sample_video, analysis_type="dance")
    body = await assert_rejected(response, 400)
    assert "highlights or workout" in body["message"]


async def test_params_without_analysis_type_are_a_400(client, sample_video, tmp_path):
    response = await upload(client, sample_video, params='{"segment_seconds": 5}')
    await assert_rejected(response, 400, "Invalid parameters")
    assert files_under(tmp_path / "data") == []


async def test_over_max_upload_mb_is_a_413_and_the_partial_file_is_removed(
    aiohttp_client, tmp_path
):
    """MAX_UPLOAD_MB is counted in MiB and enforced while the file streams in."""
    client = await start(aiohttp_client, tmp_path, max_upload_mb=1)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (1024 * 1024 + 1))
    body = await assert_rejected(await upload(client, big), 413, "Upload too large")
    assert "1 MiB" in body["message"]
    assert files_under(tmp_path / "data") == []


async def test_a_declared_length_far_over_the_limit_is_refused_before_reading(
    aiohttp_client, tmp_path
):
    client = await start(aiohttp_client, tmp_path, max_upload_mb=1)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (3 * 1024 * 1024))
    await assert_rejected(await upload(client, big), 413, "Upload too large")
    assert files_under(tmp_path / "data") == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda path, video: write_zero_bytes(path), id="zero-bytes"),
        pytest.param(lambda path, video: write_text_file(path), id="text"),
        pytest.param(lambda path, video: write_truncated(path, video), id="truncated"),
        pytest.param(lambda path, video: write_audio_only(path), id="audio-only"),
        pytest.param(lambda path, video: write_still_image(path), id="still-image"),
    ],
)
async def test_undecodable_uploads_are_a_415_and_leave_nothing(
    client, sample_video, tmp_path, make
):
    """Zero bytes, text, a truncated MP4, audio only and a still image are not videos."""
    bad = make(tmp_path / "bad.mp4", sample_video)
    response = await upload(client, bad, analysis_type="highlights")
    body = await assert_rejected(response, 415, "Unsupported media type")
    assert str(tmp_path) not in body["message"]
    assert files_under(tmp_path / "data") == []


async def test_a_video_longer_than_max_video_seconds_is_a_422_saying_the_limit(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path, max_video_seconds=5)
    response = await upload(client, sample_video, analysis_type="highlights")
    body = await assert_rejected(response, 422, "Video too long")
    assert "limit is 5 s" in body["message"]
    assert files_under(tmp_path / "data") == []


async def test_a_full_queue_is_a_503_with_retry_after_and_leaves_nothing(
    aiohttp_client, tmp_path, sample_video
):
    """One job running (hang) and one queued fill a queue of one: the next upload is refused."""
    client = await start(aiohttp_client, tmp_path, max_concurrent_jobs=1, max_queued_jobs=1)
    running = await upload(client, sample_video, "hang-1.mp4", analysis_type="highlights")
    assert running.status == 202
    queued = await upload(client, sample_video, "hang-2.mp4", analysis_type="highlights")
    assert queued.status == 202
    before = files_under(tmp_path / "data")
    response = await upload(client, sample_video, "third.mp4", analysis_type="highlights")
    await assert_rejected(response, 503)
    assert int(response.headers["Retry-After"]) >= 1
    assert files_under(tmp_path / "data") == before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
async def test_a_full_disk_is_a_507_and_the_partial_file_is_removed(
    client, sample_video, tmp_path, monkeypatch
):
    """Writes go to /dev/full (ENOSPC from the kernel) through the path the server picks."""
    session_id = uuid.UUID("2a1f6c1e-7b1c-4e3a-9d2f-3c4b5a6d7e8f")
    monkeypatch.setattr(upload_flow.uuid, "uuid4", lambda: session_id)
    folder = tmp_path / "data" / "uploads" / str(session_id)
    folder.mkdir(parents=True)
    (folder / "source.mp4").symlink_to("/dev/full")
    response = await upload(client, sample_video, analysis_type="highlights")
    await assert_rejected(response, 507, "Insufficient storage")
    assert files_under(tmp_path / "data") == []


@pytest.mark.parametrize("like_run_app", [True, False], ids=["run_app", "test_server"])
async def test_a_client_that_leaves_mid_upload_leaves_nothing_behind(
    aiohttp_client, tmp_path, sample_video, like_run_app
):
    """A client gone half-way through its upload: the partial file and folder go too."""
    client, ended = await start_watching_route(
        aiohttp_client, tmp_path, "upload", like_run_app=like_run_app
    )
    boundary = "leavingboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.mp4"\r\n\r\n'
    ).encode()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        (
            f"POST {V1}/upload HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
        ).encode()
        + head
        + sample_video.read_bytes()
    )
    await writer.drain()
    # The server reads every byte sent before it sees the end, so the file part has begun.
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(POLL_LIMIT_SECONDS):
        await ended.wait()
    assert files_under(tmp_path / "data") == []
