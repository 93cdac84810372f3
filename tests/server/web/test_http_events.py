"""GET /api/v1/video/events/{id}: SSE framing, ids, resume, 204 after the end, pings, shutdown."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest

from tests.server.http_helpers import (
    POLL_LIMIT_SECONDS,
    V1,
    finished,
    start,
    start_watching_route,
    upload_id,
)

# The whole v1 HTTP behaviour, on SQLite and on Redis.
pytestmark = pytest.mark.usefixtures("backend")


@dataclass
class Frame:
    id: int | None = None
    event: str | None = None
    data: dict | None = None
    comments: list[str] = field(default_factory=list)


async def read_frame(response) -> Frame | None:
    """One SSE frame (lines up to a blank line), or None at the end of the stream."""
    frame, data_lines, seen = Frame(), [], False
    while True:
        raw = await response.content.readline()
        if not raw:
            return frame if seen else None
        line = raw.decode().rstrip("\r\n")
        if not line:
            if seen:
                if data_lines:
                    frame.data = json.loads("\n".join(data_lines))
                return frame
            continue
        seen = True
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "":
            frame.comments.append(value)
        elif key == "id":
            frame.id = int(value)
        elif key == "event":
            frame.event = value
        elif key == "data":
            data_lines.append(value)


async def read_all(response) -> list[Frame]:
    frames = []
    while (frame := await read_frame(response)) is not None:
        frames.append(frame)
    return frames


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await start(aiohttp_client, tmp_path)


async def test_a_live_stream_sends_status_partial_then_one_terminal_event_and_closes(
    client, sample_video
):
    session_id = await upload_id(client, sample_video)
    response = await client.get(f"{V1}/events/{session_id}")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    await client.post(f"{V1}/analyze/{session_id}", json={"analysis_type": "highlights"})
    frames = [frame for frame in await read_all(response) if frame.event]

    names = [frame.event for frame in frames]
    assert names[0] == "status" and frames[0].data["status"] == "uploaded"
    assert names[-1] == "completed" and names.count("completed") == 1
    assert set(names[1:-1]) <= {"status", "partial"} and "partial" in names
    ids = [frame.id for frame in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    partial = frames[names.index("partial")].data
    assert partial["sessionId"] == session_id and partial["item"]["start"] == 0.0
    final = frames[-1].data
    assert final["sessionId"] == session_id and final["status"] == "completed"
    assert final["progress"] == 1.0


async def test_a_finished_session_streams_its_terminal_event_then_closes(client, sample_video):
    session_id = await upload_id(client, sample_video, "fail.mp4", analysis_type="highlights")
    await finished(client, session_id)
    frames = [f for f in await read_all(await client.get(f"{V1}/events/{session_id}")) if f.event]
    assert [frame.event for frame in frames] == ["failed"]
    assert frames[0].data["status"] == "failed" and frames[0].data["error"]


async def test_the_terminal_event_of_a_job_cancelled_while_queued_names_its_step(
    aiohttp_client, tmp_path, sample_video
):
    """API.md: currentStep is a string in every status but uploaded and pending."""
    client = await start(aiohttp_client, tmp_path, max_concurrent_jobs=1)
    await upload_id(client, sample_video, "hang-1.mp4", analysis_type="highlights")
    queued = await upload_id(client, sample_video, "hang-2.mp4", analysis_type="highlights")
    response = await client.get(f"{V1}/events/{queued}")
    first = await read_frame(response)
    assert first.event == "status" and first.data["currentStep"] is None
    await client.post(f"{V1}/cancel/{queued}")
    frames = [frame for frame in await read_all(response) if frame.event]
    assert frames[-1].event == "cancelled"
    assert frames[-1].data["currentStep"] == "Cancelled while queued"


async def test_a_one_step_upload_never_streams_the_two_step_flows_uploaded(client, sample_video):
    """API.md: `uploaded` is the state of an upload waiting for `analyze`, nothing else."""
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    frames = [f for f in await read_all(await client.get(f"{V1}/events/{session_id}")) if f.event]
    statuses = [frame.data["status"] for frame in frames if frame.event != "partial"]
    assert statuses[0] in ("pending", "processing", "completed")
    assert "uploaded" not in statuses and statuses[-1] == "completed"


async def test_reconnecting_with_the_terminal_event_id_is_a_204(client, sample_video):
    """204 No Content is what stops a browser's EventSource from reconnecting."""
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, session_id)
    frames = await read_all(await client.get(f"{V1}/events/{session_id}"))
    terminal = frames[-1].id
    by_header = await client.get(
        f"{V1}/events/{session_id}", headers={"Last-Event-ID": str(terminal)}
    )
    assert by_header.status == 204
    by_query = await client.get(f"{V1}/events/{session_id}?lastEventId={terminal}")
    assert by_query.status == 204


async def test_reconnecting_mid_stream_resumes_after_the_last_event_id(client, sample_video):
    session_id = await upload_id(client, sample_video)
    stream = await client.get(f"{V1}/events/{session_id}")
    await client.post(f"{V1}/analyze/{session_id}", json={"analysis_type": "highlights"})
    everything = [frame for frame in await read_all(stream) if frame.event]
    middle = everything[1].id
    resumed = await client.get(f"{V1}/events/{session_id}", headers={"Last-Event-ID": str(middle)})
    again = [frame for frame in await read_all(resumed) if frame.event]
    after = [frame for frame in everything if frame.id > middle]
    assert [(f.id, f.event) for f in again] == [(f.id, f.event) for f in after]


async def test_a_last_event_id_that_is_not_an_event_id_is_a_400(client, sample_video):
    session_id = await upload_id(client, sample_video)
    response = await client.get(f"{V1}/events/{session_id}", headers={"Last-Event-ID": "x"})
    assert response.status == 400 and (await response.json())["code"] == 400


async def test_an_idle_stream_gets_comment_pings(aiohttp_client, tmp_path, sample_video):
    client = await start(aiohttp_client, tmp_path, sse_ping_seconds=0.05)
    session_id = await upload_id(client, sample_video)
    response = await client.get(f"{V1}/events/{session_id}")
    first = await read_frame(response)
    assert first.event == "status"
    ping = await read_frame(response)
    assert ping.event is None and ping.comments == ["ping"]
    response.close()


async def test_server_shutdown_ends_open_streams(aiohttp_client, tmp_path, sample_video):
    client = await start(aiohttp_client, tmp_path)
    session_id = await upload_id(client, sample_video)
    response = await client.get(f"{V1}/events/{session_id}")
    assert (await read_frame(response)).event == "status"
    closing = asyncio.ensure_future(client.server.close())
    assert await read_all(response) == []
    await closing


@pytest.mark.parametrize("like_run_app", [True, False], ids=["run_app", "test_server"])
async def test_a_stream_whose_client_left_ends_on_the_server(
    aiohttp_client, tmp_path, sample_video, like_run_app
):
    """An idle session publishes nothing, so the handler must notice the disconnect itself."""
    client, ended = await start_watching_route(
        aiohttp_client, tmp_path, "events", like_run_app=like_run_app
    )
    session_id = await upload_id(client, sample_video)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {V1}/events/{session_id} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"event: status")
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(POLL_LIMIT_SECONDS):
        await ended.wait()
