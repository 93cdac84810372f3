"""The queue of sessions waiting for a worker slot: the interface, its claims, and the FIFO
in memory.

A runner takes a job as a `Claim`, renews the claim while the job runs and finishes it
when the job is over. On one machine the claim's lease is trivial (nobody else could take
the job); on a cluster (`RedisJobQueue`) it is a lease that lapses when its node stops
renewing it, and another node then takes the job over.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Protocol

from server.state.models import QueueFull

# A full queue drains at the pace of whole jobs (minutes each); asking sooner only adds load.
RETRY_AFTER_SECONDS = 30
# The lease of a job on one machine: nothing takes it over, so this only paces the keeper's
# reads of the session (its fallback for a cancel it was not told of).
LOCAL_LEASE_SECONDS = 15.0


@dataclass(frozen=True)
class Claim:
    """A job a runner took: its session, the queue's handle on it, and how often it was
    handed out (more than once: the runner that had it stopped before it ended)."""

    session_id: str
    entry_id: str
    deliveries: int


class JobQueue(Protocol):
    """Session ids waiting for a worker slot, oldest first, at most `max_queued` of them,
    and the claims of the runners that took them.

    Async because a shared queue (Redis) answers over the network. A taken job keeps its
    place (and so the others' positions) until the runner says it `started`, so a session
    is never pending without a position; it is held by its claim until `finish`.
    """

    max_queued: int
    retry_after_seconds: int
    lease_seconds: float
    # True: a claim not renewed for `lease_seconds` goes to whichever runner takes next (a
    # shared queue). False: a claim holds until finished; the lease only paces the keeper.
    lease_lapses: bool

    async def push(self, session_id: str, *, extra: int = 0) -> None:
        """Append a session; raises QueueFull when `max_queued + extra` wait already (`extra`:
        the free slots that take jobs at once), ValueError if it is queued or claimed."""

    async def requeue(self, session_id: str) -> bool:
        """Append a session that nothing holds (neither queued nor claimed), over the limit;
        False, and nothing done, if something holds it."""

    async def remove(self, session_id: str) -> bool:
        """Take a waiting session out (a claim not yet started loses it); False if it was
        not waiting."""

    async def position(self, session_id: str) -> int | None:
        """1-based place among the waiting sessions, or None if it is not waiting."""

    async def has_room(self, extra: int = 0) -> bool:
        """Whether one more session may be pushed when `extra` of them start at once."""

    async def depth(self) -> int:
        """How many sessions wait."""

    async def queued(self) -> list[str]:
        """The waiting ids, oldest first."""

    async def take(self, node_id: str, block_seconds: float) -> Claim | None:
        """A job for `node_id`, waiting up to `block_seconds` for one; None if none came."""

    async def started(self, claim: Claim) -> bool:
        """The claimed job begins: it stops waiting. False if it was removed meanwhile."""

    async def renew(self, claim: Claim, node_id: str) -> bool:
        """Extend the claim's lease; False if the job is no longer this node's."""

    async def finish(self, claim: Claim) -> None:
        """The job is over (ended, cancelled, or given up): nobody runs it again."""


class MemoryJobQueue:
    """A `JobQueue` in a dict, for one process: its claims never lapse."""

    def __init__(
        self,
        max_queued: int,
        *,
        retry_after_seconds: int = RETRY_AFTER_SECONDS,
        lease_seconds: float = LOCAL_LEASE_SECONDS,
    ) -> None:
        if max_queued < 0:
            raise ValueError("max_queued must not be negative")
        self.max_queued = max_queued
        self.retry_after_seconds = retry_after_seconds
        self.lease_seconds = lease_seconds
        self.lease_lapses = False  # nobody else could take a job over
        # A dict keeps insertion order and makes membership and removal O(1).
        self._ids: dict[str, None] = {}
        self._claims: dict[str, Claim] = {}
        self._entries = itertools.count(1)
        self._pushed = asyncio.Event()

    async def push(self, session_id: str, *, extra: int = 0) -> None:
        """Append a session; raises QueueFull (with a retry-after) when the queue is full."""
        if session_id in self._ids or session_id in self._claims:
            raise ValueError(f"session {session_id} is already queued")
        if len(self._ids) >= self.max_queued + extra:
            raise QueueFull(self.retry_after_seconds)
        self._add(session_id)

    async def requeue(self, session_id: str) -> bool:
        """Over the limit: it is work accepted earlier, and refusing it would lose it."""
        if session_id in self._ids or session_id in self._claims:
            return False
        self._add(session_id)
        return True

    async def remove(self, session_id: str) -> bool:
        if session_id not in self._ids:
            return False
        del self._ids[session_id]
        self._claims.pop(session_id, None)
        return True

    async def position(self, session_id: str) -> int | None:
        if session_id not in self._ids:
            return None
        for place, queued in enumerate(self._ids, start=1):
            if queued == session_id:
                return place
        return None

    async def has_room(self, extra: int = 0) -> bool:
        return len(self._ids) < self.max_queued + extra

    async def depth(self) -> int:
        return len(self._ids)

    async def queued(self) -> list[str]:
        return list(self._ids)

    async def take(self, node_id: str, block_seconds: float) -> Claim | None:
        """The oldest waiting session nobody took yet; waits up to `block_seconds` for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_seconds
        while True:
            for session_id in self._ids:
                if session_id not in self._claims:
                    claim = Claim(session_id, str(next(self._entries)), 1)
                    self._claims[session_id] = claim
                    return claim
            self._pushed.clear()
            try:
                await asyncio.wait_for(self._pushed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                return None

    async def started(self, claim: Claim) -> bool:
        if self._claims.get(claim.session_id) is not claim:
            return False
        self._ids.pop(claim.session_id, None)
        return True

    async def renew(self, claim: Claim, node_id: str) -> bool:
        return self._claims.get(claim.session_id) is claim

    async def finish(self, claim: Claim) -> None:
        if self._claims.get(claim.session_id) is claim:
            del self._claims[claim.session_id]
            self._ids.pop(claim.session_id, None)

    def _add(self, session_id: str) -> None:
        self._ids[session_id] = None
        self._pushed.set()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids

    def __repr__(self) -> str:
        return f"<MemoryJobQueue {len(self._ids)}/{self.max_queued} claimed={len(self._claims)}>"
