"""JobQueue: FIFO order, 1-based positions, removal anywhere, and a bounded size."""

import pytest

from server.jobs.job_queue import RETRY_AFTER_SECONDS, JobQueue
from server.state.models import QueueFull


def test_jobs_leave_in_arrival_order():
    queue = JobQueue(5)
    for session_id in "abc":
        queue.push(session_id)
    assert [queue.pop(), queue.pop(), queue.pop()] == ["a", "b", "c"]
    assert len(queue) == 0


def test_positions_are_one_based_and_shift_when_jobs_leave():
    queue = JobQueue(5)
    for session_id in "abcd":
        queue.push(session_id)
    assert [queue.position(s) for s in "abcd"] == [1, 2, 3, 4]
    assert queue.remove("b") is True
    queue.pop()
    assert [queue.position(s) for s in "acd"] == [None, 1, 2]
    assert list(queue) == ["c", "d"]


def test_position_of_an_unqueued_id_is_none_and_removing_it_is_false():
    queue = JobQueue(5)
    assert queue.position("x") is None
    assert queue.remove("x") is False


def test_a_full_queue_refuses_with_a_retry_after():
    queue = JobQueue(2)
    queue.push("a")
    assert queue.has_room()
    queue.push("b")
    assert not queue.has_room()
    with pytest.raises(QueueFull) as refused:
        queue.push("c")
    assert refused.value.retry_after_seconds == RETRY_AFTER_SECONDS
    assert list(queue) == ["a", "b"]


def test_a_zero_sized_queue_never_has_room():
    queue = JobQueue(0)
    assert not queue.has_room()
    with pytest.raises(QueueFull):
        queue.push("a")


def test_the_same_session_cannot_be_queued_twice():
    queue = JobQueue(5)
    queue.push("a")
    with pytest.raises(ValueError):
        queue.push("a")


def test_popping_an_empty_queue_is_an_index_error():
    with pytest.raises(IndexError):
        JobQueue(1).pop()


def test_iterating_is_a_snapshot_so_the_queue_may_change_meanwhile():
    queue = JobQueue(5)
    for session_id in "abc":
        queue.push(session_id)
    seen = []
    for session_id in queue:
        seen.append(session_id)
        queue.remove(session_id)
    assert seen == ["a", "b", "c"]
    assert "a" not in queue and len(queue) == 0
