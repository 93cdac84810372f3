"""Cancel signals between the nodes of a cluster, over Redis pub/sub.

The node that records a cancel publishes the session id on one channel; every node hears
it and the one holding the job stops its worker, then publishes the id on a second
channel ("gone"), which ends the wait of the node that answers the cancel. A lost message
costs time, never the cancel: the owner's lease keeper reads the session at each renewal,
and the waiting node looks at the job's lease meanwhile and gives up on a dead owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from server.jobs.redis_job_queue import RedisJobQueue
from server.state.redis_connection import KEY_PREFIX, raise_if_cancelling, unavailable_as_busy
from server.state.redis_pubsub import listen

log = logging.getLogger("server.jobs.redis_cancel_channel")

CANCEL_CHANNEL = KEY_PREFIX + "cancel"
GONE_CHANNEL = KEY_PREFIX + "gone"
# A cancel waits for the owner's word this long at most (its worker ends in a few seconds).
CANCEL_WAIT_SECONDS = 15.0
# How often a waiting cancel looks whether the owner still holds the job (a lost message).
CANCEL_POLL_SECONDS = 0.5


class RedisCancelChannel:
    """A `CancelChannel` shared by the nodes on one Redis; `queue` tells who holds a job."""

    def __init__(self, client: aioredis.Redis, queue: RedisJobQueue) -> None:
        self._client = client
        self._queue = queue
        self._gone: dict[str, asyncio.Event] = {}
        self._stop: Callable[[str], Awaitable[None]] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, stop: Callable[[str], Awaitable[None]]) -> None:
        """Listen for cancels (handed to `stop`) and for owners saying their worker is gone."""
        if self._listener is None:
            self._stop = stop
            self._listener = asyncio.create_task(
                listen(
                    self._client,
                    [CANCEL_CHANNEL, GONE_CHANNEL],
                    self._heard,
                    is_open=lambda: not self._closed,
                    on_lost=lambda: log.warning(
                        "cancel signals lost; lease keepers still read each session"
                    ),
                ),
                name="cancel signals",
            )

    async def until_gone(self, session_id: str) -> None:
        """Signal the owner and wait (bounded) until it says the worker is gone."""
        if not await self._owner_alive(session_id):
            return  # nobody runs it, or its node is dead: the lease ends it
        gone = self._gone.setdefault(session_id, asyncio.Event())
        await self._publish(CANCEL_CHANNEL, session_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_SECONDS
        while loop.time() < deadline:
            raise_if_cancelling()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(gone.wait(), CANCEL_POLL_SECONDS)
                return
            if not await self._owner_alive(session_id):
                return
        log.warning("session %s: its owner did not confirm the cancel in time", session_id)

    async def gone(self, session_id: str) -> None:
        await self._publish(GONE_CHANNEL, session_id)

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None

    async def _owner_alive(self, session_id: str) -> bool:
        owner = await self._queue.owner(session_id)
        return owner is not None and owner.idle_seconds <= self._queue.lease_seconds

    @unavailable_as_busy
    async def _publish(self, channel: str, session_id: str) -> None:
        await self._client.publish(channel, session_id)

    async def _heard(self, channel: str, session_id: str) -> None:
        if channel == GONE_CHANNEL:
            gone = self._gone.pop(session_id, None)
            if gone is not None:
                gone.set()
        elif self._stop is not None:
            await self._stop(session_id)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<RedisCancelChannel waiting={len(self._gone)}{state}>"
