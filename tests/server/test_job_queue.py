"""MemoryJobQueue: FIFO order, 1-based positions, removal anywhere, and a bounded size."""

import pytest

from server.jobs.job_queue import RETRY_AFTER_SECONDS, MemoryJobQueue
from server.state.models import QueueFull


async def test_jobs_leave_in_arrival_order():
    queue = MemoryJobQueue(5)
    for session_id in "abc":
        await queue.push(session_id)
    assert [queue.pop(), queue.pop(), queue.pop()] == ["a", "b", "c"]
    assert len(queue) == 0


async def test_positions_are_one_based_and_shift_when_jobs_leave():
    queue = MemoryJobQueue(5)
    for session_id in "abcd":
        await queue.push(session_id)
    assert [await queue.position(s) for s in "abcd"] == [1, 2, 3, 4]
    assert await queue.remove("b") is True
    queue.pop()
    assert [await queue.position(s) for s in "acd"] == [None, 1, 2]
    assert list(queue) == ["c", "d"]


async def test_position_of_an_unqueued_id_is_none_and_removing_it_is_false():
    queue = MemoryJobQueue(5)
    assert await queue.position("x") is None
    assert await queue.remove("x") is False


async def test_a_full_queue_refuses_with_a_retry_after():
    queue = MemoryJobQueue(2)
    await queue.push("a")
    assert await queue.has_room()
    await queue.push("b")
    assert not (await queue.has_room())
    with pytest.raises(QueueFull) as refused:
        await queue.push("c")
    assert refused.value.retry_after_seconds == RETRY_AFTER_SECONDS
    assert list(queue) == ["a", "b"]


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


async def test_popping_an_empty_queue_is_an_index_error():
    with pytest.raises(IndexError):
        MemoryJobQueue(1).pop()


async def test_iterating_is_a_snapshot_so_the_queue_may_change_meanwhile():
    queue = MemoryJobQueue(5)
    for session_id in "abc":
        await queue.push(session_id)
    seen = []
    for session_id in queue:
        seen.append(session_id)
        await queue.remove(session_id)
    assert seen == ["a", "b", "c"]
    assert "a" not in queue and len(queue) == 0
