"""An `EventLog` in Redis: one Stream per session, the same ids on every node.

Each session's events are entries of the Stream `smolvlm:events:<id>` with ids `<n>-0`,
where n counts from 1 per session, so an SSE id is the same whichever node serves it and a
client resumes on any node with `Last-Event-ID`. A Lua script appends atomically: it
refuses anything after the terminal event, numbers the event, keeps the latest status and
the terminal event in a small hash (what a new subscriber starts from), bounds the Stream
(`MAXLEN ~`), and publishes the session id on one channel.

Readers wait on that channel, through one subscription per node, and then read the Stream
from where they are. Pub/sub may lose a message (a reconnect), so a reader also reads
again every `POLL_SECONDS`: the Stream is the truth, the channel only makes it prompt.
A reader whose position was trimmed away gets the latest status, then continues with the
oldest kept event, as with the in-memory hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import redis.asyncio as aioredis

from server.state.events import (
    MAX_BACKLOG,
    STATUS_EVENT_NAME,
    TERMINAL_EVENT_NAMES,
    ServerEvent,
)
from server.state.redis_connection import (
    KEY_PREFIX,
    REDIS_ERRORS,
    raise_if_cancelling,
    unavailable_as_busy,
)
from server.state.redis_pubsub import listen

log = logging.getLogger("server.state.redis_events")

STREAM_KEY = KEY_PREFIX + "events:"
META_KEY = KEY_PREFIX + "events-meta:"
CHANNEL = KEY_PREFIX + "events"
# A missed wake-up costs a reader at most this long; each poll is one cheap XRANGE.
POLL_SECONDS = 1.0
# Entries read per XRANGE while a reader catches up.
READ_BATCH = 200

# ARGV: name, data, is_status, is_terminal, maxlen, session id. Returns the id, or 0 after the end.
_PUBLISH = """
if redis.call('HEXISTS', KEYS[2], 'terminal_id') == 1 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], n .. '-0', 'n', ARGV[1], 'd', ARGV[2])
if ARGV[3] == '1' then redis.call('HSET', KEYS[2], 'status_id', n, 'status', ARGV[2]) end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], 'terminal_id', n, 'terminal_name', ARGV[1], 'terminal', ARGV[2])
end
redis.call('PUBLISH', KEYS[3], ARGV[6])
return n
"""


def _event(entry_id: str, fields: dict[str, str]) -> ServerEvent:
    return ServerEvent(int(entry_id.split("-", 1)[0]), fields["n"], json.loads(fields["d"]))


class RedisEventLog:
    """Per-session event Streams in Redis, with the node's readers woken through pub/sub."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._publish = client.register_script(_PUBLISH)
        self._changed: dict[str, asyncio.Event] = {}
        self._closed = False
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> RedisEventLog:
        """Subscribe to the wake-up channel; returns self."""
        self._listener = asyncio.create_task(self._listen(), name="event log wake-ups")
        return self

    @unavailable_as_busy
    async def publish(self, session_id: str, name: str, data: dict[str, Any]) -> ServerEvent | None:
        """Append an event; None if the session's log already ended (another node ended it)."""
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
        event_id = await self._publish(
            keys=[STREAM_KEY + session_id, META_KEY + session_id, CHANNEL],
            args=[
                name,
                text,
                int(name == STATUS_EVENT_NAME),
                int(name in TERMINAL_EVENT_NAMES),
                MAX_BACKLOG,
                session_id,
            ],
        )
        self._wake(session_id)  # readers on this node need not wait for the round trip
        return ServerEvent(event_id, name, data) if event_id else None

    def subscribe(
        self, session_id: str, last_event_id: int | None = None
    ) -> AsyncGenerator[ServerEvent, None]:
        """As `EventHub.subscribe`, with the starting point fixed at the first read."""
        return self._follow(session_id, last_event_id)

    @unavailable_as_busy
    async def last_event_id(self, session_id: str) -> int | None:
        seq = await self._client.hget(META_KEY + session_id, "seq")
        return int(seq) if seq else None

    @unavailable_as_busy
    async def is_finished(self, session_id: str, last_event_id: int | None) -> bool:
        terminal = await self._client.hget(META_KEY + session_id, "terminal_id")
        return terminal is not None and last_event_id is not None and int(terminal) == last_event_id

    @unavailable_as_busy
    async def forget(self, session_id: str) -> None:
        await self._client.delete(STREAM_KEY + session_id, META_KEY + session_id)
        await self._client.publish(CHANNEL, session_id)
        self._wake(session_id)

    async def close(self) -> None:
        """End every subscription on this node and stop listening. Safe to call twice."""
        self._closed = True
        for session_id in list(self._changed):
            self._wake(session_id)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None

    # ---- reading ------------------------------------------------------------------------

    async def _follow(
        self, session_id: str, last_event_id: int | None
    ) -> AsyncGenerator[ServerEvent, None]:
        if self._closed:
            return
        meta = await self._meta(session_id)
        newest = int(meta.get("seq", 0))
        if last_event_id is not None and 0 <= last_event_id <= newest:
            cursor = last_event_id
        else:
            current = _current(meta)
            cursor = newest
            if current is not None:
                yield current
                if current.is_terminal:
                    return
                cursor = current.id
        while not self._closed:
            raise_if_cancelling()
            changed = self._changed.setdefault(session_id, asyncio.Event())  # before reading
            entries = await self._read(session_id, cursor)
            if entries:
                first = entries[0].id
                if first > cursor + 1:
                    # Events after `cursor` were trimmed: catch up on the state, skip the gap.
                    status = _status(await self._meta(session_id))
                    if status is not None and cursor < status.id < first:
                        yield status
                for event in entries:
                    yield event
                    if event.is_terminal:
                        return
                    cursor = event.id
                continue
            meta = await self._meta(session_id)
            if not meta:
                return  # forgotten
            if "terminal_id" in meta:
                if int(meta["terminal_id"]) > cursor:
                    continue  # it ended after our read: read on up to its terminal event
                return  # a resume at the terminal event ends here
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), POLL_SECONDS)

    async def _read(self, session_id: str, cursor: int) -> list[ServerEvent]:
        try:
            entries = await self._client.xrange(
                STREAM_KEY + session_id, min=f"({cursor}-0", count=READ_BATCH
            )
        except REDIS_ERRORS:
            raise_if_cancelling()
            await asyncio.sleep(POLL_SECONDS)  # Redis is away: the stream waits, not fails
            return []
        return [_event(entry_id, fields) for entry_id, fields in entries]

    async def _meta(self, session_id: str) -> dict[str, str]:
        while True:
            try:
                return await self._client.hgetall(META_KEY + session_id)
            except REDIS_ERRORS:
                raise_if_cancelling()
                if self._closed:
                    return {}
                await asyncio.sleep(POLL_SECONDS)

    def _wake(self, session_id: str) -> None:
        changed = self._changed.pop(session_id, None)
        if changed is not None:
            changed.set()

    async def _listen(self) -> None:
        """Wake this node's readers of each session named on the channel."""
        await listen(
            self._client,
            [CHANNEL],
            self._woken,
            is_open=lambda: not self._closed,
            on_lost=self._lost,
        )

    async def _woken(self, channel: str, session_id: str) -> None:
        self._wake(session_id)

    def _lost(self) -> None:
        log.warning("event wake-ups lost; readers poll until Redis is back")
        for session_id in list(self._changed):
            self._wake(session_id)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<RedisEventLog readers={len(self._changed)}{state}>"


def _current(meta: dict[str, str]) -> ServerEvent | None:
    """What a new subscriber starts from: the terminal event, else the latest status."""
    if "terminal_id" in meta:
        return ServerEvent(
            int(meta["terminal_id"]), meta["terminal_name"], json.loads(meta["terminal"])
        )
    return _status(meta)


def _status(meta: dict[str, str]) -> ServerEvent | None:
    if "status_id" not in meta:
        return None
    return ServerEvent(int(meta["status_id"]), STATUS_EVENT_NAME, json.loads(meta["status"]))
