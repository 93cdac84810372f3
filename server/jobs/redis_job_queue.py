"""The cluster's job queue on a Redis Stream with a consumer group: at-least-once, leased.

Why a Stream and not arq or SAQ: a consumer group already is the queue the issue asks
for. XREADGROUP hands each entry to one node, which reads only when it has a free slot;
the entry then sits in that node's pending list until XACK, and that pending entry is
the job's lease. The owner renews it while the worker runs (`XCLAIM <self> ... JUSTID`
resets its idle time without counting a delivery), so a two-hour job on a live node is
never taken away; a node with a free slot takes over entries idle longer than the lease
with XAUTOCLAIM, which counts the delivery that `MAX_JOB_ATTEMPTS` bounds. arq's fixed
in-progress TTL and SAQ's sweeper can hand a live job to a second worker, and their
abort keys outlive the job (see FIELD_NOTES); meeting the issue with them would take
patches of our own.

Beside the Stream, a sorted set keeps the ids still waiting, in order: positions
(ZRANK), depth (ZCARD) and removal of a queued job (ZREM, with the entry deleted so
nobody reads it) are one command each. A node that reads an entry keeps it in the set
until the session is marked processing (`started`), so a pending session always has a
position; an entry removed meanwhile (cancelled) makes `started` say False. A hash maps
each session to its entry from push to finish: a session is "held" while it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from server.jobs.job_queue import RETRY_AFTER_SECONDS, Claim
from server.state.models import QueueFull
from server.state.redis_connection import KEY_PREFIX, unavailable_as_busy

STREAM_KEY = KEY_PREFIX + "jobs"
GROUP = "runners"
QUEUED_KEY = KEY_PREFIX + "jobs-queued"
ENTRY_KEY = KEY_PREFIX + "jobs-entry"
SEQUENCE_KEY = KEY_PREFIX + "jobs-sequence"

# 1: queued; 0: full (ARGV[2] is the limit, or '' for none); -1: already queued or claimed.
_PUSH = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return -1 end
if ARGV[2] ~= '' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[4]), ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], redis.call('XADD', KEYS[2], '*', 'sid', ARGV[1]))
return 1
"""
# 1 if the claim's entry still stands for its session (it was not removed meanwhile).
_STARTED = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then return 1 end
return 0
"""
_REMOVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local entry = redis.call('HGET', KEYS[3], ARGV[1])
if entry then
  redis.call('XDEL', KEYS[2], entry)
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 1
"""
# Renew only what this node still holds: XCLAIM alone would take it back from a new owner.
_RENEW = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""
# A claim given up before it started still has its place in the waiting set: it goes too.
_FINISH = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
return 1
"""


@dataclass(frozen=True)
class Owner:
    """Which node holds a job's lease, and how long ago it last renewed it."""

    node_id: str
    idle_seconds: float


class RedisJobQueue:
    """A `JobQueue` shared by every node; a claim's `entry_id` is its Stream entry."""

    def __init__(
        self,
        client: aioredis.Redis,
        max_queued: int,
        *,
        lease_seconds: float,
        retry_after_seconds: int = RETRY_AFTER_SECONDS,
    ) -> None:
        self.max_queued = max_queued
        self.retry_after_seconds = retry_after_seconds
        self.lease_seconds = lease_seconds
        self.lease_lapses = True  # a node that stops renewing leaves its jobs to the others
        self._client = client
        self._push = client.register_script(_PUSH)
        self._started = client.register_script(_STARTED)
        self._remove = client.register_script(_REMOVE)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)

    async def open(self) -> RedisJobQueue:
        """Create the Stream and its consumer group if this is the cluster's first node."""
        try:
            await self._client.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        return self

    # ---- the JobQueue interface --------------------------------------------------------

    @unavailable_as_busy
    async def push(self, session_id: str, *, extra: int = 0) -> None:
        done = await self._push(
            keys=[QUEUED_KEY, STREAM_KEY, ENTRY_KEY, SEQUENCE_KEY],
            args=[session_id, self.max_queued + extra],
        )
        if done == 0:
            raise QueueFull(self.retry_after_seconds)
        if done < 0:
            raise ValueError(f"session {session_id} is already queued")

    @unavailable_as_busy
    async def requeue(self, session_id: str) -> bool:
        """Atomic, so two nodes that find the same orphan queue it once."""
        keys = [QUEUED_KEY, STREAM_KEY, ENTRY_KEY, SEQUENCE_KEY]
        return await self._push(keys=keys, args=[session_id, ""]) == 1

    @unavailable_as_busy
    async def remove(self, session_id: str) -> bool:
        keys = [QUEUED_KEY, STREAM_KEY, ENTRY_KEY]
        return bool(await self._remove(keys=keys, args=[session_id]))

    @unavailable_as_busy
    async def position(self, session_id: str) -> int | None:
        rank = await self._client.zrank(QUEUED_KEY, session_id)
        return None if rank is None else rank + 1

    @unavailable_as_busy
    async def has_room(self, extra: int = 0) -> bool:
        return await self._client.zcard(QUEUED_KEY) < self.max_queued + extra

    @unavailable_as_busy
    async def depth(self) -> int:
        return await self._client.zcard(QUEUED_KEY)

    @unavailable_as_busy
    async def queued(self) -> list[str]:
        return await self._client.zrange(QUEUED_KEY, 0, -1)

    # ---- claims, for the nodes that run jobs -------------------------------------------

    @unavailable_as_busy
    async def take(self, node_id: str, block_seconds: float) -> Claim | None:
        """A job for `node_id`: first one whose lease lapsed, else the oldest waiting one.

        Waits up to `block_seconds` for one to arrive; None if nothing came.
        """
        lapsed = await self._client.xautoclaim(
            STREAM_KEY,
            GROUP,
            node_id,
            min_idle_time=int(self.lease_seconds * 1000),
            start_id="0-0",
            count=1,
        )
        if lapsed[1]:
            entry_id, fields = lapsed[1][0]
            return Claim(fields["sid"], entry_id, await self._deliveries(entry_id))
        read = await self._client.xreadgroup(
            GROUP, node_id, {STREAM_KEY: ">"}, count=1, block=int(block_seconds * 1000)
        )
        if not read:
            return None
        entry_id, fields = read[0][1][0]
        return Claim(fields["sid"], entry_id, 1)

    @unavailable_as_busy
    async def started(self, claim: Claim) -> bool:
        keys = [QUEUED_KEY, ENTRY_KEY]
        return bool(await self._started(keys=keys, args=[claim.session_id, claim.entry_id]))

    @unavailable_as_busy
    async def renew(self, claim: Claim, node_id: str) -> bool:
        """Reset the lease's idle time; False if another node holds the job now."""
        args = [GROUP, claim.entry_id, node_id]
        return bool(await self._renew(keys=[STREAM_KEY], args=args))

    @unavailable_as_busy
    async def finish(self, claim: Claim) -> None:
        await self._finish(
            keys=[STREAM_KEY, ENTRY_KEY, QUEUED_KEY],
            args=[GROUP, claim.entry_id, claim.session_id],
        )

    @unavailable_as_busy
    async def owner(self, session_id: str) -> Owner | None:
        """The node holding the session's job, if one does."""
        entry_id = await self._client.hget(ENTRY_KEY, session_id)
        if entry_id is None:
            return None
        pending = await self._client.xpending_range(
            STREAM_KEY, GROUP, min=entry_id, max=entry_id, count=1
        )
        if not pending:
            return None
        return Owner(pending[0]["consumer"], pending[0]["time_since_delivered"] / 1000)

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self._client.xpending_range(
            STREAM_KEY, GROUP, min=entry_id, max=entry_id, count=1
        )
        return pending[0]["times_delivered"] if pending else 1

    def __repr__(self) -> str:
        return f"<RedisJobQueue max={self.max_queued} lease={self.lease_seconds:g}s>"
