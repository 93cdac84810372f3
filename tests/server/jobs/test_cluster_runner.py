"""The one JobRunner on the cluster's Redis queue and cancel channel, in this process.

What a node killed at the wrong moment leaves behind (a pending session no stream holds,
a queue entry whose session was never stored) is run or dropped, never left forever.
"""

from __future__ import annotations

import asyncio

import pytest

from protocol import AnalysisType
from server.jobs.redis_cancel_channel import RedisCancelChannel
from server.jobs.redis_job_queue import RedisJobQueue
from server.jobs.runner import JobRunner
from server.state.models import SessionStatus
from server.state.redis_connection import connect
from server.state.redis_events import RedisEventLog
from server.state.redis_store import RedisStore
from server.state.sessions import Sessions
from server.storage.local import LocalFiles
from tests.server.conftest import FAKE_WORKER, WAIT, local_job_files, new_session

LEASE_SECONDS = 2.0


@pytest.fixture
async def make_node(redis_url, data_paths):
    """Factory: `await make_node(name, orphan_sweep_seconds=...)` -> (runner, sessions, queue)."""
    made = []

    async def make(name: str, *, orphan_sweep_seconds: float = 60.0):
        client = connect(redis_url)
        queue = await RedisJobQueue(client, 10, lease_seconds=LEASE_SECONDS).open()
        events = await RedisEventLog(client).start()
        sessions = Sessions(RedisStore(client), events, LocalFiles(data_paths), queue.position)
        runner = JobRunner(
            sessions,
            queue,
            cancels=RedisCancelChannel(client, queue),
            node_id=name,
            files=local_job_files(data_paths),
            model="test-model",
            worker_command=FAKE_WORKER,
            orphan_sweep_seconds=orphan_sweep_seconds,
        )
        await runner.start()
        made.append((runner, events, client))
        return runner, sessions, queue

    yield make
    for runner, events, client in made:
        await runner.close()
        await events.close()
        await client.aclose()


def pending_session(data_paths):
    return new_session(
        data_paths,
        status=SessionStatus.PENDING,
        analysis_type=AnalysisType.HIGHLIGHTS,
        params={"mode": "succeed"},
    )


async def test_a_pending_session_that_no_stream_holds_is_run_by_the_sweep(make_node, data_paths):
    """As if its node died between storing it pending and queueing it."""
    runner, sessions, queue = await make_node("one", orphan_sweep_seconds=0.2)
    orphan = await sessions.create(pending_session(data_paths))
    assert await queue.owner(orphan.id) is None and await queue.position(orphan.id) is None
    done = await asyncio.wait_for(runner.wait(orphan.id), WAIT)
    assert done.status is SessionStatus.COMPLETED and done.attempts == 1


async def test_two_nodes_sweeping_at_once_queue_an_orphan_once(make_node, data_paths):
    first, sessions, _ = await make_node("one")
    second, _, _ = await make_node("two")
    orphan = await sessions.create(pending_session(data_paths))
    assert sorted(await asyncio.gather(first.recover(), second.recover())) == [0, 1]
    done = await asyncio.wait_for(first.wait(orphan.id), WAIT)
    assert done.status is SessionStatus.COMPLETED and done.attempts == 1


async def test_an_entry_taken_before_its_session_is_stored_pending_runs_once_it_is(
    make_node, data_paths
):
    """A submitter queues first and stores second; a node may read the entry in between."""
    runner, sessions, queue = await make_node("one")
    session = pending_session(data_paths)
    await queue.push(session.id)
    await asyncio.sleep(0.1)  # the node has the entry, and no session to go with it yet
    await sessions.create(session)
    done = await asyncio.wait_for(runner.wait(session.id), WAIT)
    assert done.status is SessionStatus.COMPLETED


async def test_an_entry_whose_session_never_comes_is_dropped(make_node, data_paths):
    """Its submitter died between queueing and storing: nothing is left holding a slot."""
    runner, sessions, queue = await make_node("one")
    await queue.push("never-stored")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while await queue.owner("never-stored") is not None or await queue.depth():
        assert loop.time() < deadline, "the entry was never dropped"
        await asyncio.sleep(0.05)
    assert runner.running_count == 0
    later = await sessions.create(pending_session(data_paths))
    await queue.push(later.id)
    done = await asyncio.wait_for(runner.wait(later.id), WAIT)
    assert done.status is SessionStatus.COMPLETED
