"""Decode ahead: produce item N+1 in a background thread while the caller works on item N.

A job alternates decoding a segment's frames (PyAV) and running the model on them (MLX).
Both release the GIL in their native code, so overlapping them makes a job take about
max(decode, model) instead of their sum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")


def prefetched(produce: Callable[[T], U], items: Iterable[T]) -> Iterator[U]:
    """Yield `produce(item)` for each item, computing the next one while the caller holds this one.

    `produce` runs in one background thread, in order, one call at a time (a video reader
    is not safe to use from two threads at once). Its exceptions surface at the matching
    `next()`. Closing the iterator early cancels the look-ahead that has not started.
    """
    # One thread: the look-ahead is a single item, and the reader is sequential anyway.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead")
    pending: Future[U] | None = None
    try:
        for item in items:
            upcoming = executor.submit(produce, item)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
