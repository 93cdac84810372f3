"""POST /analyze/highlights and /analyze/workout: synchronous, same runner, same limits."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from server.state.models import SessionStatus
from server.web import app_keys as keys
from tests.media import write_text_file
from tests.server.http_helpers import (
    POLL_LIMIT_SECONDS,
    POLL_SECONDS,
    V1,
    files_under,
    start,
    video_form,
)

# The whole v1 HTTP behaviour, on SQLite and on Redis.
pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await start(aiohttp_client, tmp_path)


async def only_session(client):
    sessions = await client.app[keys.SESSIONS].list()
    assert len(sessions) == 1
    return sessions[0]


async def test_highlights_answers_200_with_the_bare_results_object(client, sample_video):
    response = await client.post("/analyze/highlights", data=video_form(sample_video))
    body = await response.json()
    assert response.status == 200, body
    assert body["analysisType"] == "highlights" and "sessionId" not in body
    session = await only_session(client)
    assert body["highlights"][0]["thumbnail"] == f"{V1}/results/{session.id}/thumbnails/0"
    reel = await client.get(body["reel"]["url"])
    assert reel.status == 200 and await reel.read() == sample_video.read_bytes()


async def test_workout_takes_params_as_individual_form_fields(client, sample_video):
    """As the old endpoints did: `segment_seconds=5` as its own field, read as a number."""
    form = video_form(sample_video, segment_seconds="5", exercise_hint="squats")
    response = await client.post("/analyze/workout", data=form)
    body = await response.json()
    assert response.status == 200, body
    assert body["analysisType"] == "workout" and body["summary"]["total_reps"] == 3
    session = await only_session(client)
    assert session.params["segment_seconds"] == 5.0 and session.params["exercise_hint"] == "squats"


async def test_params_may_also_come_as_one_json_field(client, sample_video):
    form = video_form(sample_video, params='{"min_significance": 9}')
    response = await client.post("/analyze/highlights", data=form)
    assert response.status == 200
    assert (await only_session(client)).params["min_significance"] == 9


async def test_params_both_ways_at_once_are_a_400(client, sample_video, tmp_path):
    form = video_form(sample_video, params="{}", min_significance="9")
    response = await client.post("/analyze/highlights", data=form)
    assert response.status == 400 and "not both" in (await response.json())["message"]
    assert files_under(tmp_path / "data") == []


async def test_an_empty_params_field_is_the_same_as_none_beside_individual_fields(
    client, sample_video
):
    form = video_form(sample_video, params=" ", min_significance="9")
    response = await client.post("/analyze/highlights", data=form)
    assert response.status == 200, await response.text()
    assert (await only_session(client)).params["min_significance"] == 9


async def test_an_unknown_form_field_is_a_400_naming_the_allowed_ones(
    client, sample_video, tmp_path
):
    form = video_form(sample_video, colour="red")
    response = await client.post("/analyze/workout", data=form)
    body = await response.json()
    assert response.status == 400 and "'colour'" in body["message"]
    assert "allowed: exercise_hint, frames_per_segment, segment_seconds" in body["message"]
    assert files_under(tmp_path / "data") == []


async def test_a_failed_analysis_is_the_500_of_results(client, sample_video):
    form = video_form(sample_video, filename="fail.mp4")
    response = await client.post("/analyze/highlights", data=form)
    body = await response.json()
    assert response.status == 500
    assert body["error"] == "Analysis failed" and "the model saw no frames" in body["message"]


async def test_a_file_that_is_not_a_video_is_a_415_and_leaves_nothing(client, tmp_path):
    text = write_text_file(tmp_path / "notes.mp4")
    response = await client.post("/analyze/workout", data=video_form(text))
    assert response.status == 415
    assert files_under(tmp_path / "data") == []


async def test_no_file_is_a_400(client):
    form = aiohttp.FormData()
    form.add_field("min_significance", "4")
    response = await client.post("/analyze/highlights", data=form)
    assert response.status == 400 and (await response.json())["error"] == "No file"


def multipart_request(path: str, video: bytes, filename: bytes) -> bytes:
    """A complete HTTP/1.1 multipart upload, byte for byte, as a raw client sends it."""
    boundary = b"testboundary7MA4YWxk"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: video/mp4\r\n\r\n" + video + b"\r\n--" + boundary + b"--\r\n"
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@pytest.mark.parametrize("like_run_app", [True, False], ids=["run_app", "test_server"])
async def test_a_client_that_disconnects_while_waiting_has_its_job_cancelled(
    aiohttp_client, tmp_path, sample_video, like_run_app
):
    """Under run_app aiohttp does not cancel the handler on disconnect, so the handler
    notices by itself; under a server that cancels handlers, the cancellation does it."""
    client = await start(aiohttp_client, tmp_path, like_run_app=like_run_app)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(multipart_request("/analyze/highlights", sample_video.read_bytes(), b"hang.mp4"))
    await writer.drain()
    sessions = client.app[keys.SESSIONS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + POLL_LIMIT_SECONDS
    while not (running := await sessions.list(status=SessionStatus.PROCESSING)):
        assert loop.time() < deadline, "the job never started"
        await asyncio.sleep(POLL_SECONDS)
    writer.close()
    await writer.wait_closed()
    session = await client.app[keys.RUNNER].wait(running[0].id)
    assert session.status.value == "cancelled"


async def test_a_filename_that_is_not_utf8_is_stored_safely(client, sample_video, tmp_path):
    reader, writer = await asyncio.open_connection(client.host, client.port)
    request = multipart_request("/analyze/highlights", sample_video.read_bytes(), b"caf\xe9.mp4")
    writer.write(request.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    session = await only_session(client)
    assert session.video.filename.startswith("caf") and session.video.filename.endswith(".mp4")
    session.video.filename.encode("utf-8")  # storable and showable as UTF-8
    assert (tmp_path / "data" / "uploads" / session.id / "source.mp4").is_file()
