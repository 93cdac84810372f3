"""MemoryJobQueue: FIFO order, 1-based positions, removal anywhere, a bounded size, and
claims that keep a taken job's place until it starts."""

import asyncio

import pytest

from server.jobs.job_queue import RETRY_AFTER_SECONDS, MemoryJobQueue
from server.state.models import QueueFull


async def start_next(queue: MemoryJobQueue) -> str:
    """Take the next job and start it at once; its session id."""
    claim = await queue.take("node", 0)
    assert claim is not None
    assert await queue.started(claim)
    return claim.session_id


async def test_jobs_leave_in_arrival_order():
    queue = MemoryJobQueue(5)
    for session_id in "abc":
        await queue.push(session_id)
    assert [await start_next(queue) for _ in range(3)] == ["a", "b", "c"]
    assert len(queue) == 0


async def test_positions_are_one_based_and_shift_when_jobs_leave():
    queue = MemoryJobQueue(5)
    for session_id in "abcd":
        await queue.push(session_id)
    assert [await queue.position(s) for s in "abcd"] == [1, 2, 3, 4]
    assert await queue.remove("b") is True
    await start_next(queue)
    assert [await queue.position(s) for s in "acd"] == [None, 1, 2]
    assert await queue.queued() == ["c", "d"]


async def test_a_taken_job_keeps_its_place_until_it_starts():
    """So a session is never pending without a position while its runner marks it."""
    queue = MemoryJobQueue(5)
    for session_id in "ab":
        await queue.push(session_id)
    claim = await queue.take("node", 0)
    assert claim.session_id == "a" and claim.deliveries == 1
    assert [await queue.position(s) for s in "ab"] == [1, 2]
    assert (await queue.take("node", 0)).session_id == "b"  # a taken job is not handed out twice
    assert await queue.started(claim)
    assert [await queue.position(s) for s in "ab"] == [None, 1]


async def test_a_job_removed_between_take_and_start_does_not_start():
    queue = MemoryJobQueue(5)
    await queue.push("a")
    claim = await queue.take("node", 0)
    assert await queue.remove("a") is True
    assert await queue.started(claim) is False
    assert await queue.depth() == 0


async def test_take_waits_for_a_push_and_gives_up_after_its_block():
    queue = MemoryJobQueue(5)
    assert await queue.take("node", 0.01) is None
    waiting = asyncio.ensure_future(queue.take("node", 30))
    await asyncio.sleep(0)
    await queue.push("a")
    assert (await asyncio.wait_for(waiting, 30)).session_id == "a"


async def test_a_claim_is_held_until_finished_and_its_lease_never_lapses():
    queue = MemoryJobQueue(5)
    await queue.push("a")
    claim = await queue.take("node", 0)
    await queue.started(claim)
    assert await queue.renew(claim, "node")
    assert await queue.requeue("a") is False  # held by its claim
    with pytest.raises(ValueError):
        await queue.push("a")
    await queue.finish(claim)
    assert not await queue.renew(claim, "node")
    assert await queue.requeue("a") is True


async def test_requeue_goes_over_the_limit_but_never_twice():
    queue = MemoryJobQueue(1)
    await queue.push("a")
    assert await queue.requeue("b") is True
    assert await queue.requeue("b") is False
    assert await queue.queued() == ["a", "b"]


async def test_a_full_queue_refuses_with_a_retry_after():
    queue = MemoryJobQueue(2)
    await queue.push("a")
    assert await queue.has_room()
    await queue.push("b")
    assert not (await queue.has_room())
    with pytest.raises(QueueFull) as refused:
        await queue.push("c")
    assert refused.value.retry_after_seconds == RETRY_AFTER_SECONDS
    assert await queue.queued() == ["a", "b"]


async def test_free_slots_that_take_jobs_at_once_make_room_beyond_the_limit():
    queue = MemoryJobQueue(1)
    await queue.push("a")
    assert not await queue.has_room()
    assert await queue.has_room(extra=1)
    await queue.push("b", extra=1)
    with pytest.raises(QueueFull):
        await queue.push("c", extra=1)


async def test_a_zero_sized_queue_never_has_room():
    queue = MemoryJobQueue(0)
    assert not (await queue.has_room())
    with pytest.raises(QueueFull):
        await queue.push("a")


async def test_the_same_session_cannot_be_queued_twice():
    queue = MemoryJobQueue(5)
    await queue.push("a")
    with pytest.raises(ValueError):
        await queue.push("a")


async def test_queued_is_a_snapshot_so_the_queue_may_change_meanwhile():
    queue = MemoryJobQueue(5)
    for session_id in "abc":
        await queue.push(session_id)
    seen = []
    for session_id in await queue.queued():
        seen.append(session_id)
        await queue.remove(session_id)
    assert seen == ["a", "b", "c"]
    assert "a" not in queue and len(queue) == 0
