"""The queue of sessions waiting for a worker slot: the interface, and the FIFO in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from server.state.models import QueueFull

# A full queue drains at the pace of whole jobs (minutes each); asking sooner only adds load.
RETRY_AFTER_SECONDS = 30


class JobQueue(Protocol):
    """Session ids waiting for a worker slot, oldest first, at most `max_queued` of them.

    Async because a shared queue (Redis) answers over the network; taking jobs out is
    each runner's own business (a local pop, or a leased claim on a cluster).
    """

    max_queued: int
    retry_after_seconds: int

    async def push(self, session_id: str, *, over_limit: bool = False) -> None:
        """Append a session; raises QueueFull unless `over_limit` (work accepted earlier)."""

    async def remove(self, session_id: str) -> bool:
        """Take a session out wherever it waits; False if it was not queued."""

    async def position(self, session_id: str) -> int | None:
        """1-based place in the queue, or None if it is not queued."""

    async def has_room(self) -> bool:
        """Whether one more session may be pushed."""

    async def depth(self) -> int:
        """How many sessions wait."""

    async def queued(self) -> list[str]:
        """The waiting ids, oldest first."""


class MemoryJobQueue:
    """A `JobQueue` in a dict, for one process; `pop` is its runner's way out."""

    def __init__(self, max_queued: int, *, retry_after_seconds: int = RETRY_AFTER_SECONDS) -> None:
        if max_queued < 0:
            raise ValueError("max_queued must not be negative")
        self.max_queued = max_queued
        self.retry_after_seconds = retry_after_seconds
        # A dict keeps insertion order and makes membership and removal O(1).
        self._ids: dict[str, None] = {}

    async def push(self, session_id: str, *, over_limit: bool = False) -> None:
        """Append a session; raises QueueFull (with a retry-after) when the queue is full.

        `over_limit` is for jobs accepted earlier (re-queued after a restart): the limit
        guards against new work, and refusing old work would lose it.
        """
        if session_id in self._ids:
            raise ValueError(f"session {session_id} is already queued")
        if not over_limit and not self._has_room():
            raise QueueFull(self.retry_after_seconds)
        self._ids[session_id] = None

    def pop(self) -> str:
        """Take the oldest session; IndexError when the queue is empty."""
        if not self._ids:
            raise IndexError("pop from an empty job queue")
        session_id = next(iter(self._ids))
        del self._ids[session_id]
        return session_id

    async def remove(self, session_id: str) -> bool:
        if session_id not in self._ids:
            return False
        del self._ids[session_id]
        return True

    async def position(self, session_id: str) -> int | None:
        if session_id not in self._ids:
            return None
        for place, queued in enumerate(self._ids, start=1):
            if queued == session_id:
                return place
        return None

    async def has_room(self) -> bool:
        return self._has_room()

    async def depth(self) -> int:
        return len(self._ids)

    async def queued(self) -> list[str]:
        return list(self._ids)

    def _has_room(self) -> bool:
        return len(self._ids) < self.max_queued

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids

    def __iter__(self) -> Iterator[str]:
        """The queued ids, oldest first (a copy: the queue may change while you iterate)."""
        return iter(list(self._ids))

    def __repr__(self) -> str:
        return f"<MemoryJobQueue {len(self._ids)}/{self.max_queued}>"
