"""`prefetched`: items produced in a background thread, in order, a set number ahead."""

from __future__ import annotations

import threading

import pytest

from inference_worker.prefetch import prefetched


def _pulled(pulls):
    for index in range(6):
        pulls.append(index)
        yield index


@pytest.mark.parametrize("ahead", [1, 3])
def test_items_come_in_order_with_ahead_more_already_taken(ahead):
    pulls = []
    stream = prefetched(lambda n: n * 10, _pulled(pulls), ahead=ahead)

    first = next(stream)

    assert first == 0
    assert pulls == list(range(ahead + 1))  # the first, and `ahead` more submitted
    assert [first, *stream] == [0, 10, 20, 30, 40, 50]


def test_produce_runs_in_one_background_thread():
    threads = set()

    def produce(n):
        threads.add(threading.current_thread().name)
        return n

    assert list(prefetched(produce, range(5), ahead=2)) == list(range(5))
    assert len(threads) == 1 and threads != {threading.current_thread().name}


def test_an_error_surfaces_at_its_item():
    def produce(n):
        if n == 2:
            raise OSError("bad frame")
        return n

    stream = prefetched(produce, range(4), ahead=2)
    assert [next(stream), next(stream)] == [0, 1]
    with pytest.raises(OSError, match="bad frame"):
        next(stream)


def test_ahead_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        next(prefetched(lambda n: n, range(2), ahead=0))
