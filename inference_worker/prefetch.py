"""Decode ahead: produce the next items in a background thread while the caller works on item N.

A job alternates decoding a segment's frames (PyAV) and running the model on them (MLX).
Both release the GIL in their native code, so overlapping them makes a job take about
max(decode, model) instead of their sum.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")


def prefetched(
    produce: Callable[[T], U], items: Iterable[T], ahead: int = 1
) -> Generator[U, None, None]:
    """Yield `produce(item)` for each item, computing up to `ahead` more while the caller works.

    `produce` runs in one background thread, in order, one call at a time (a video reader
    is not safe to use from two threads at once). Its exceptions surface at the matching
    `next()`. A caller that takes items in batches of B (batched judging) passes ahead=B,
    so the next batch decodes while the model judges this one. Closing the iterator early
    cancels the look-ahead that has not started.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, got {ahead}")
    # One thread: the reader is sequential anyway.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead")
    pending: deque[Future[U]] = deque()
    try:
        for item in items:
            pending.append(executor.submit(produce, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
