"""Which node delivers a session's pending webhook: one at a time in the whole service.

The deliverer claims a delivery before its first attempt and holds the claim through its
retries until it is over (delivered, given up, or its session gone). Alone, a claim is a
name in this process's memory, which holds it for as long as the process lives. On a
cluster it is a Redis key (`SET NX PX`) that lapses unless its node renews it: a node
killed mid-delivery lets go within a lease, and a live node's sweep finds the delivery in
the index of deliveries not yet over and takes it up. Once per cluster in the normal
case, at least once across crashes (a node killed between the receiver's 2xx and the
write that records it leaves the next owner to send it again).
"""

from __future__ import annotations

import time
from typing import Protocol, cast

import redis.asyncio as aioredis

from server.state.redis_connection import KEY_PREFIX, RENEW_LEASE_SCRIPT, unavailable_as_busy

CLAIM_KEY = KEY_PREFIX + "webhook-claim:"
# Deliveries taken once and not over yet, scored by when they were first taken.
UNFINISHED_KEY = KEY_PREFIX + "webhooks-unfinished"

_TAKE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '1' then redis.call('ZREM', KEYS[2], ARGV[3]) end
return 1
"""


class DeliveryClaims(Protocol):
    """The verbs by which a deliverer holds a session's delivery for itself alone.

    `lease_seconds` is how long a claim holds unrenewed, or None when it holds as long as
    this process (then nothing is renewed and nothing lapses, so nothing needs a sweep).
    """

    lease_seconds: float | None

    async def take(self, session_id: str) -> bool:
        """Claim the session's delivery for this node; False if another node holds it."""
        ...

    async def renew(self, session_id: str) -> bool:
        """Hold the claim for another lease; False if another node holds it now."""
        ...

    async def release(self, session_id: str, *, over: bool) -> None:
        """Let the claim go; `over` when nothing is left to deliver, so no sweep finds it."""
        ...

    async def unclaimed(self) -> list[str]:
        """Sessions whose delivery was taken once, is not over, and nobody holds now."""
        ...


class MemoryDeliveryClaims:
    """Claims of one process: its deliveries are its own, and end with it."""

    lease_seconds: float | None = None

    def __init__(self) -> None:
        self._held: set[str] = set()

    async def take(self, session_id: str) -> bool:
        if session_id in self._held:
            return False
        self._held.add(session_id)
        return True

    async def renew(self, session_id: str) -> bool:
        return session_id in self._held

    async def release(self, session_id: str, *, over: bool) -> None:
        self._held.discard(session_id)

    async def unclaimed(self) -> list[str]:
        return []  # a delivery of this process is held until it is over or the process ends

    def __repr__(self) -> str:
        return f"<MemoryDeliveryClaims held={len(self._held)}>"


class RedisDeliveryClaims:
    """Claims shared by every node on one Redis, each a key holding its node's id.

    Redis errors become `StateUnavailable`.
    """

    def __init__(self, client: aioredis.Redis, node_id: str, *, lease_seconds: float) -> None:
        self.lease_seconds: float | None = lease_seconds
        self._client = client
        self._node_id = node_id
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(RENEW_LEASE_SCRIPT)
        self._release = client.register_script(_RELEASE)

    @unavailable_as_busy
    async def take(self, session_id: str) -> bool:
        keys = [CLAIM_KEY + session_id, UNFINISHED_KEY]
        args: list[str | int] = [self._node_id, self._lease_ms, int(time.time() * 1000), session_id]
        return bool(await self._take(keys=keys, args=args))

    @unavailable_as_busy
    async def renew(self, session_id: str) -> bool:
        keys = [CLAIM_KEY + session_id]
        return bool(await self._renew(keys=keys, args=[self._node_id, self._lease_ms]))

    @unavailable_as_busy
    async def release(self, session_id: str, *, over: bool) -> None:
        keys = [CLAIM_KEY + session_id, UNFINISHED_KEY]
        await self._release(keys=keys, args=[self._node_id, int(over), session_id])

    @unavailable_as_busy
    async def unclaimed(self) -> list[str]:
        # The client decodes responses: the members are str.
        session_ids = cast(list[str], await self._client.zrange(UNFINISHED_KEY, 0, -1))
        if not session_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.exists(CLAIM_KEY + session_id)
            held = await pipe.execute()
        return [session_id for session_id, n in zip(session_ids, held, strict=True) if not n]

    def __repr__(self) -> str:
        return f"<RedisDeliveryClaims node={self._node_id} lease={self._lease_ms} ms>"
