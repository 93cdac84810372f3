"""A running job rides out a Redis outage: a real redis-server is killed (-9) mid-job and
started again on the same data while real nodes run the job.

Shorter than the lease, the job goes on where it was: its events wait and are written in
order once Redis is back. Longer than the lease, it is taken over from the start, as a
dead node's job would be. Never `failed`. Nodes hold leases of LEASE_SECONDS (2 s) here,
and of LONGER_LEASE_SECONDS where an outage outlasts the Redis client's own few retries
(about 0.7 s) and still stays well inside the lease.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from server.jobs.runner import LOST_NODE_STEP
from tests.server.cluster import LEASE_SECONDS, V1, Cluster, read_events, read_to_the_end
from tests.server.redis_server import RedisServer

pytestmark = pytest.mark.slow

SHORT_OUTAGE_SECONDS = 0.3
LONGER_LEASE_SECONDS = 6.0
# Past the Redis client's retries, short of a lease less a renewal interval and a retry.
WAITED_OUTAGE_SECONDS = 2.5
LONG_OUTAGE_SECONDS = LEASE_SECONDS + 1.0
# What a node logs when a job's write begins to wait (server.state.patience).
WAIT_LOG = "waits for the session store"
# Partials an SSE client has seen before Redis is killed: the job is well under way.
SEEN_BEFORE_THE_KILL = 3


@pytest.fixture
async def own_redis(tmp_path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own, since the test kills it."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def make_nodes(tmp_path, own_redis) -> AsyncIterator:
    """Factory: `await make_nodes(lease)` -> an api node and a worker node on `own_redis`,
    holding leases of `lease` seconds; stopped at the end."""
    async with aiohttp.ClientSession() as http:
        cluster = Cluster(tmp_path, own_redis.url, http)

        async def make(lease: float = LEASE_SECONDS) -> Cluster:
            await cluster.node("api", node_lease_seconds=lease)
            await cluster.node("worker", node_lease_seconds=lease)
            return cluster

        try:
            yield make
        finally:
            cluster.stop()


async def outage_during_a_job(
    cluster: Cluster, redis: RedisServer, video, filename: str, seconds: float
) -> tuple[str, list[dict[str, str]], int]:
    """Run a job, followed over SSE on the api node, with Redis killed mid-job for
    `seconds`; (session id, every event to the end, how many came before the kill)."""
    api = cluster.nodes[0]
    session_id = await cluster.job(api, video, filename)
    stream = await cluster.http.get(f"{api.url}{V1}/events/{session_id}")
    assert stream.status == 200
    events: list[dict[str, str]] = []
    while sum(event["event"] == "partial" for event in events) < SEEN_BEFORE_THE_KILL:
        events += await read_events(stream, 1)
    before = len(events)
    redis.kill()
    await asyncio.sleep(seconds)
    redis.start()
    events += await read_to_the_end(stream)
    return session_id, events, before


def steps_of_partials(events: list[dict[str, str]]) -> list[int]:
    return [int(json.loads(e["data"])["item"]["end"]) for e in events if e["event"] == "partial"]


def processing_progress(events: list[dict[str, str]]) -> list[float]:
    bodies = [json.loads(e["data"]) for e in events if e["event"] == "status"]
    return [body["progress"] for body in bodies if body["status"] == "processing"]


@pytest.mark.parametrize(
    ("outage", "lease"),
    [(SHORT_OUTAGE_SECONDS, LEASE_SECONDS), (WAITED_OUTAGE_SECONDS, LONGER_LEASE_SECONDS)],
    ids=["0.3 s", "2.5 s, past the client's retries"],
)
async def test_a_job_rides_out_a_redis_outage_shorter_than_its_lease(
    make_nodes, own_redis, sample_video, outage, lease
):
    nodes = await make_nodes(lease)
    session_id, events, before = await outage_during_a_job(
        nodes, own_redis, sample_video, "parts16.mp4", outage
    )

    assert events[-1]["event"] == "completed", events[-1]
    assert "failed" not in [event["event"] for event in events]
    assert steps_of_partials(events) == list(range(1, 17)), "a partial was lost or repeated"
    ids = [int(event["id"]) for event in events]
    assert ids == sorted(set(ids)), "one stream, in order, through the outage"
    # Progress resumes: the client sees it move on after the outage.
    assert max(processing_progress(events[before:])) > max(processing_progress(events[:before]))
    assert (await nodes.status(nodes.nodes[0], session_id))["status"] == "completed"
    assert [word for word, _ in nodes.runs(session_id)] == ["start", "end"], "it ran again"
    if outage > SHORT_OUTAGE_SECONDS:
        # This one the Redis client could not hide: the job's writes did wait.
        assert WAIT_LOG in nodes.nodes[1].log_path.read_text()


async def test_a_redis_outage_longer_than_the_lease_hands_the_job_over(
    make_nodes, own_redis, sample_video
):
    nodes = await make_nodes()
    session_id, events, before = await outage_during_a_job(
        nodes, own_redis, sample_video, "parts32.mp4", LONG_OUTAGE_SECONDS
    )

    assert events[-1]["event"] == "completed", events[-1]
    assert "failed" not in [event["event"] for event in events]
    steps = [json.loads(e["data"])["currentStep"] for e in events if e["event"] == "status"]
    assert LOST_NODE_STEP.format(n=2) in steps, "it was not taken over"
    takeover = next(
        i for i, e in enumerate(events) if LOST_NODE_STEP.format(n=2) in e.get("data", "")
    )
    assert steps_of_partials(events[takeover:]) == list(range(1, 33)), "the second run's partials"
    ids = [int(event["id"]) for event in events]
    assert ids == sorted(set(ids))
    status = await nodes.status(nodes.nodes[0], session_id)
    assert status["status"] == "completed"
    # The first run was stopped when its lease lapsed; the second ran to its end.
    assert [word for word, _ in nodes.runs(session_id)] == ["start", "start", "end"]
