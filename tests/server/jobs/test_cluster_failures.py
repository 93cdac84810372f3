"""What a cluster survives: a node killed mid-job, Redis killed and restarted, a lost lease.

Nodes hold leases of two seconds here, so a take-over comes within seconds.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis

from server.jobs.redis_job_queue import ENTRY_KEY, GROUP, STREAM_KEY
from server.jobs.runner import LOST_NODE_STEP
from tests.server.cluster import LEASE_SECONDS, TERMINAL, V1, Cluster, cluster, read_to_the_end
from tests.server.conftest import dies, process_alive
from tests.server.redis_server import RedisServer

__all__ = ["cluster"]  # the fixture
pytestmark = pytest.mark.slow


def ended(body: dict) -> bool:
    return body["status"] in TERMINAL


async def test_a_job_of_a_killed_node_completes_on_another_on_the_same_stream(
    cluster, sample_video
):
    api = await cluster.node("api")
    await cluster.node("worker")
    await cluster.node("worker")
    session_id = await cluster.job(api, sample_video, "slow12.mp4")
    stream = await cluster.http.get(f"{api.url}{V1}/events/{session_id}")
    first_pid = await cluster.running_pid(session_id)
    cluster.kill(cluster.owner_of(first_pid))

    events = await read_to_the_end(stream)
    assert events[-1]["event"] == "completed"
    steps = [e["data"] for e in events if e["event"] == "status"]
    assert any(LOST_NODE_STEP.format(n=2) in data for data in steps)
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)), "one stream, in order, across the take-over"
    assert (await cluster.status(api, session_id))["status"] == "completed"
    assert await dies(first_pid), "the dead node's worker went on running"
    runs = cluster.runs(session_id)
    assert [word for word, _ in runs] == ["start", "start", "end"]
    assert runs[1][1] != first_pid


async def test_a_job_longer_than_several_leases_runs_once_on_a_live_node(cluster, sample_video):
    api = await cluster.node("api")
    await cluster.node("worker")
    await cluster.node("worker")
    assert 48 * 0.25 > 5 * LEASE_SECONDS  # slow48: 48 steps of 0.25 s
    session_id = await cluster.job(api, sample_video, "slow48.mp4")
    assert (await cluster.until(api, session_id, ended))["status"] == "completed"
    assert [word for word, _ in cluster.runs(session_id)] == ["start", "end"]


async def test_a_node_that_loses_its_lease_stops_its_worker(cluster, sample_video):
    """Another consumer takes the job's entry (as a partitioned node's lease lapsing would)."""
    api = await cluster.node("api")
    await cluster.node("worker")
    session_id = await cluster.job(api, sample_video, "slow16.mp4")
    pid = await cluster.running_pid(session_id)
    with redis.Redis.from_url(cluster.redis_url, decode_responses=True) as client:
        entry = client.hget(ENTRY_KEY, session_id)
        assert client.xclaim(STREAM_KEY, GROUP, "elsewhere", 0, [entry], justid=True)
    assert await dies(pid), "the attempt without a lease kept its worker"
    # Nobody renews the lease of "elsewhere": the job comes back and completes.
    assert (await cluster.until(api, session_id, ended))["status"] == "completed"
    assert [word for word, _ in cluster.runs(session_id)] == ["start", "start", "end"]


async def test_redis_killed_and_restarted_keeps_what_it_acknowledged(tmp_path, sample_video):
    server = RedisServer(tmp_path / "redis").start()
    async with aiohttp.ClientSession() as http:
        own = Cluster(tmp_path, server.url, http)
        try:
            node = await own.node("all")
            done = await own.job(node, sample_video, "quick.mp4")
            await own.until(node, done, ended)
            kept = [await own.upload(node, sample_video, "clip.mp4") for _ in range(5)]
            await asyncio.sleep(1.5)  # appendfsync everysec: older writes are on disk
            server.kill()
            async with http.get(f"{node.url}{V1}/status/{kept[0]}") as away:
                assert away.status == 503 and int(away.headers["Retry-After"]) >= 1
            server.start()
            for session_id in [done, *kept]:
                body = await own.until(node, session_id, lambda body: True)
                assert body["status"] in ("completed", "uploaded")
            # The node carries on: a new job runs to its end.
            again = await own.job(node, sample_video, "quick.mp4")
            assert (await own.until(node, again, ended))["status"] == "completed"
            assert process_alive(node.proc.pid)
        finally:
            own.stop()
            server.stop()
