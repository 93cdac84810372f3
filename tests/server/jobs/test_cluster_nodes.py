"""Many nodes, one service: real node processes on one Redis and one DATA_DIR.

Any node answers for any session; a cancel through a node that does not run the job
still ends its process before the answer; 500 cancels at once make one cancellation.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.server.cluster import TERMINAL, V1, cluster, read_events, read_to_the_end
from tests.server.conftest import process_alive

__all__ = ["cluster"]  # the fixture
pytestmark = pytest.mark.slow


async def test_upload_on_one_node_poll_stream_resume_and_clean_up_on_others(cluster, sample_video):
    api = await cluster.node("api")
    everything = await cluster.node("all", max_concurrent_jobs=1)
    await cluster.node("worker", max_concurrent_jobs=1)
    session_id = await cluster.job(api, sample_video, "slow12.mp4")

    first = await cluster.http.get(f"{api.url}{V1}/events/{session_id}")
    seen = await read_events(first, 3)
    first.close()  # this client's node "dies" for it: it reconnects elsewhere
    resumed = await cluster.http.get(
        f"{everything.url}{V1}/events/{session_id}", headers={"Last-Event-ID": seen[-1]["id"]}
    )
    rest = await read_to_the_end(resumed)
    ids = [int(event["id"]) for event in seen + rest]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no event lost or repeated"
    assert rest[-1]["event"] == "completed"

    body = await cluster.status(everything, session_id)
    assert body["status"] == "completed" and body["progress"] == 1.0
    async with cluster.http.get(f"{api.url}{V1}/sessions") as listed:
        assert [s["sessionId"] for s in (await listed.json())["sessions"]] == [session_id]
    async with cluster.http.delete(f"{everything.url}{V1}/cleanup/{session_id}") as gone:
        assert gone.status == 200
    async with cluster.http.get(f"{api.url}{V1}/status/{session_id}") as status:
        assert status.status == 404
    assert not (cluster.data_dir / "uploads" / session_id).exists()


async def test_queue_positions_are_global_and_a_worker_node_serves_no_api(cluster, sample_video):
    api = await cluster.node("api")
    worker = await cluster.node("worker", max_concurrent_jobs=1)
    running = await cluster.job(api, sample_video, "hang.mp4")
    await cluster.running_pid(running)
    waiting = [await cluster.job(api, sample_video, "hang.mp4") for _ in range(2)]
    assert [(await cluster.status(api, s))["queuePosition"] for s in waiting] == [1, 2]
    async with cluster.http.post(f"{api.url}{V1}/cancel/{waiting[0]}") as cancelled:
        assert cancelled.status == 200
    await cluster.until(api, waiting[1], lambda body: body["queuePosition"] == 1)
    async with cluster.http.get(f"{worker.url}{V1}/status/{running}") as refused:
        assert refused.status == 404
    async with cluster.http.get(f"{worker.url}/metrics") as metrics:
        text = await metrics.text()
    assert "smolvlm_running_jobs 1.0" in text and "smolvlm_queue_depth 1.0" in text


async def test_a_cancel_through_a_node_that_does_not_run_the_job_ends_its_process(
    cluster, sample_video
):
    api = await cluster.node("api")
    await cluster.node("worker")
    session_id = await cluster.job(api, sample_video, "hang.mp4")
    pid = await cluster.running_pid(session_id)
    async with cluster.http.post(f"{api.url}{V1}/cancel/{session_id}") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "cancelled"
        assert not process_alive(pid), "the 200 came before the worker was gone"
    assert (await cluster.status(api, session_id))["status"] == "cancelled"


async def test_five_hundred_cancels_over_three_nodes_make_one_cancellation(cluster, sample_video):
    first, _, last = [await cluster.node(role) for role in ("api", "worker", "all")]
    session_id = await cluster.job(first, sample_video, "hang.mp4")
    pid = await cluster.running_pid(session_id)
    stream = await cluster.http.get(f"{first.url}{V1}/events/{session_id}")

    async def cancel(n: int) -> int:
        node = (first, last)[n % 2]
        async with cluster.http.post(f"{node.url}{V1}/cancel/{session_id}") as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(cancel(n) for n in range(500)))
    assert [s for s in statuses if s >= 500] == []
    assert set(statuses) == {200}
    assert not process_alive(pid)
    events = await read_to_the_end(stream)
    assert [e["event"] for e in events].count("cancelled") == 1
    assert json.loads(events[-1]["data"])["status"] == "cancelled"
    assert [word for word, _ in cluster.runs(session_id)] == ["start"]


async def test_no_status_on_any_node_is_pending_without_a_queue_position(cluster, sample_video):
    """Also at the moment a worker node has taken the job and not yet marked it processing."""
    api = await cluster.node("api")
    await cluster.node("worker", max_concurrent_jobs=1)
    await cluster.node("worker", max_concurrent_jobs=1)
    polled: list[dict] = []
    ids: list[str] = []

    async def poll() -> None:
        while True:
            for session_id in list(ids):
                polled.append(await cluster.status(api, session_id))
            await asyncio.sleep(0.02)

    polling = asyncio.ensure_future(poll())
    try:
        for _ in range(4):
            ids.append(await cluster.job(api, sample_video, "slow2.mp4"))
        streamed = []
        for session_id in ids:
            stream = await cluster.http.get(
                f"{api.url}{V1}/events/{session_id}", headers={"Last-Event-ID": "0"}
            )
            streamed += await read_to_the_end(stream)
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
    published = [json.loads(e["data"]) for e in streamed if e["event"] == "status"]
    assert [json.loads(e["data"])["status"] for e in streamed if e["event"] in TERMINAL] == [
        "completed"
    ] * 4
    pending = [body for body in polled + published if body["status"] == "pending"]
    assert pending, "no pending status was seen at all"
    assert [body for body in pending if body["queuePosition"] is None] == []
