"""The Redis state a cluster shares: durable Redis only, ended sessions stay ended, and the
same event ids, resumable, on every node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import pytest

from server.state.models import SessionNotFound, SessionStatus
from server.state.redis_connection import (
    StateUnavailable,
    UnsafeRedis,
    check_durable,
    connect,
    redis_problem,
)
from server.state.redis_events import RedisEventLog
from server.state.redis_store import RedisStore
from server.state.store import SnapshotRefused
from tests.server.conftest import new_session
from tests.server.redis_server import RedisServer
from tests.server.server_process import REPO

WAIT = 30.0  # only a bound against hangs


@pytest.fixture
async def clients(redis_url):
    """Two clients on one Redis: two nodes, as far as the state goes."""
    made = [connect(redis_url), connect(redis_url)]
    yield made
    for client in made:
        await client.aclose()


async def test_a_redis_that_could_lose_writes_is_refused_with_one_line(tmp_path):
    server = RedisServer(tmp_path / "lossy", durable=False).start()
    try:
        client = connect(server.url)
        with pytest.raises(UnsafeRedis, match="appendonly.*maxmemory-policy"):
            await check_durable(client)
        await client.aclose()
        problem = await redis_problem(server.url)
        assert "appendonly is 'no', needs 'yes'" in problem and "\n" not in problem
    finally:
        server.stop()


def test_a_node_refuses_to_start_on_a_lossy_redis_with_one_line(tmp_path):
    server = RedisServer(tmp_path / "lossy", durable=False).start()
    try:
        node = subprocess.run(
            [
                sys.executable,
                "-m",
                "server",
                "--redis-url",
                server.url,
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
        )
    finally:
        server.stop()
    assert node.returncode == 1
    last = node.stderr.strip().splitlines()[-1]
    assert last.startswith("Not starting: Redis could lose acknowledged sessions: appendonly")
    assert "Traceback" not in node.stderr


async def test_an_unreachable_redis_is_a_503_kind_of_error(tmp_path):
    server = RedisServer(tmp_path / "gone")  # never started: nothing listens on its port
    store = RedisStore(connect(server.url))
    with pytest.raises(StateUnavailable) as refused:
        await store.get("any")
    assert refused.value.retry_after_seconds >= 1


async def test_a_session_ended_on_one_node_cannot_be_reopened_by_another(clients, data_paths):
    first, second = RedisStore(clients[0]), RedisStore(clients[1])
    session = new_session(data_paths, status=SessionStatus.PROCESSING)
    await first.add(session)
    stale = await second.get(session.id)
    await first.put(session.replace(status=SessionStatus.CANCELLED))
    with pytest.raises(SnapshotRefused):
        await second.put(stale.replace(progress=0.5))
    assert (await second.get(session.id)).status is SessionStatus.CANCELLED
    await second.delete(session.id)
    with pytest.raises(SessionNotFound):
        await first.put(stale)


async def test_the_list_is_newest_first_and_filters_on_every_node(clients, data_paths):
    first, second = RedisStore(clients[0]), RedisStore(clients[1])
    made = []
    for status in (SessionStatus.UPLOADED, SessionStatus.PENDING, SessionStatus.UPLOADED):
        made.append(new_session(data_paths, status=status))
        await first.add(made[-1])
        await asyncio.sleep(0.002)  # distinct creation times
    assert [s.id for s in await second.list()] == [s.id for s in reversed(made)]
    uploaded = await second.list(status=SessionStatus.UPLOADED, limit=1)
    assert [s.id for s in uploaded] == [made[2].id]
    with pytest.raises(ValueError):
        await second.add(made[0])


async def test_event_ids_are_the_same_on_every_node_and_resume_anywhere(clients):
    one, two = await RedisEventLog(clients[0]).start(), await RedisEventLog(clients[1]).start()
    try:
        live = two.subscribe("s")
        assert (await one.publish("s", "status", {"step": "a"})).id == 1
        first = await asyncio.wait_for(anext(live), WAIT)
        assert (first.id, first.data) == (1, {"step": "a"})
        assert (await one.publish("s", "partial", {"n": 1})).id == 2
        assert (await asyncio.wait_for(anext(live), WAIT)).id == 2
        await live.aclose()
        await one.publish("s", "status", {"step": "b"})
        await one.publish("s", "completed", {"done": True})
        assert await one.publish("s", "status", {"step": "late"}) is None  # after the end
        resumed = [e async for e in two.subscribe("s", last_event_id=2)]
        assert [(e.id, e.name) for e in resumed] == [(3, "status"), (4, "completed")]
        assert await two.is_finished("s", 4) and not await two.is_finished("s", 3)
        assert [e.name for e in [e async for e in one.subscribe("s")]] == ["completed"]
    finally:
        await one.close()
        await two.close()


async def test_forget_ends_subscriptions_on_other_nodes(clients):
    one, two = await RedisEventLog(clients[0]).start(), await RedisEventLog(clients[1]).start()
    try:
        await one.publish("s", "status", {"step": "a"})
        events = two.subscribe("s")
        assert (await asyncio.wait_for(anext(events), WAIT)).id == 1
        reading = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.05)
        await one.forget("s")
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reading, WAIT)
        assert await two.last_event_id("s") is None
    finally:
        with contextlib.suppress(Exception):
            await one.close()
        await two.close()
