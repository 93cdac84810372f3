"""Waiting out a session store that is away for a moment: the noun for it, and the wait.

An outage is a wait, not a failure (STYLE.md, lesson 24). A store that cannot serve just
now raises `StoreUnavailable` (Redis unreachable, a SQLite database locked by another
process); a caller that may wait, such as the runner writing a job's events, hands the
operation to `outlast`, which tries it again until it goes through or the caller's
patience runs out (`PatienceExhausted`: hand the work over, as a crash would). A request
handler does not wait: the same noun becomes a 503 with Retry-After at the HTTP edge.

The wait happens between tries, outside every lock: each try takes and releases the
locks it needs, so a cancel or a status poll on the same session is never stuck behind
a waiting write (it gets its own 503, or its answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.state.models import ServerBusy

log = logging.getLogger("server.state.patience")

# A client told to come back sooner than a store takes to return would only add load.
UNAVAILABLE_RETRY_AFTER_SECONDS = 2
# The first pause after a failed try; it doubles up to the next one.
FIRST_PAUSE_SECONDS = 0.05
# Redis restarts in about a second and a SQLite lock is held for moments: look this often.
LONGEST_PAUSE_SECONDS = 1.0

T = TypeVar("T")


class StoreUnavailable(ServerBusy):
    """The session store cannot serve this just now; the same call may go through shortly."""

    def __init__(self, message: str = "The session store is busy for a moment; try again shortly"):
        super().__init__(message, UNAVAILABLE_RETRY_AFTER_SECONDS)


class PatienceExhausted(Exception):
    """The store stayed unavailable longer than the caller may wait; `what` says what waited."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what}: the session store stayed unavailable for {seconds:.1f} s")
        self.what = what
        self.seconds = seconds


# What a try may fail with and still go through later. Redis' own connection errors are
# here too for callers below the stores (the job queue's claims raise them unwrapped).
TRANSIENT_ERRORS = (StoreUnavailable, RedisConnectionError, RedisTimeoutError)


async def outlast(operation: Callable[[], Awaitable[T]], *, patience: float | None, what: str) -> T:
    """`await operation()`, tried again while the store is unavailable; its result.

    `operation` must be safe to run again from the start (each try does all of it).
    Between tries it pauses, doubling from FIRST_PAUSE_SECONDS to LONGEST_PAUSE_SECONDS.
    Once `patience` seconds have passed since the first failed try it raises
    PatienceExhausted (from the last error); with `patience=None` it waits until
    cancelled, which is also how its owner tells it to stop at any time (the job's claim
    was lost, the server is closing). Any error other than TRANSIENT_ERRORS is raised at
    once. `what` names the operation in the log lines (one when the wait begins, one
    when it ends).
    """
    loop = asyncio.get_running_loop()
    began: float | None = None
    pause = FIRST_PAUSE_SECONDS
    while True:
        try:
            result = await operation()
        except TRANSIENT_ERRORS as exc:
            now = loop.time()
            if began is None:
                began = now
                log.warning("%s waits for the session store (%s)", what, _reason(exc))
            waited = now - began
            if patience is not None and waited >= patience:
                raise PatienceExhausted(what, waited) from exc
            if patience is not None:
                pause = min(pause, patience - waited)
            await asyncio.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE_SECONDS)
            continue
        if began is not None:
            log.info("%s went through after %.1f s", what, loop.time() - began)
        return result


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"
