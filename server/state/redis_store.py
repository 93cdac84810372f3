"""A `SessionStore` in Redis, shared by every node of a cluster.

Each session is one JSON string (`session_codec`, as the SQLite store writes it, so
fields added to a session travel with it) under `smolvlm:session:<id>`, and a sorted set
indexes the ids by creation time for the newest-first list. Writes are small Lua scripts,
atomic in Redis: `add` never overwrites, `put` never resurrects a deleted session, and a
session that ended (completed, failed, cancelled) never takes another status, whichever
node writes last. A snapshot read again unchanged is the same object as before, so the
status body made of it is made once (as with the in-memory stores).
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from server.state.models import Session, SessionNotFound, SessionStatus
from server.state.redis_connection import KEY_PREFIX, unavailable_as_busy
from server.state.session_codec import session_from_json, session_to_json
from server.state.store import SnapshotRefused

SESSION_KEY = KEY_PREFIX + "session:"
INDEX_KEY = KEY_PREFIX + "sessions"
# MGET this many sessions per round trip when listing.
LIST_BATCH = 500
TERMINAL = tuple(status.value for status in SessionStatus if status.is_terminal)

_ADD = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
return 0
"""
# 0: gone; -1: it ended with another status (another node got there first); 1: written.
_PUT = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local status = cjson.decode(current)['status']
if status ~= ARGV[2] then
  for i = 3, #ARGV do
    if status == ARGV[i] then return -1 end
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class _BatchedReads:
    """GETs asked for at about the same time go to Redis as one MGET.

    Status polls are most of the traffic, and a round trip through the client costs more
    CPU than the rest of a poll; reads that arrive while one MGET is out wait for the next,
    so under load one round trip serves many polls, and alone a read goes at once.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def get(self, key: str) -> str | None:
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="batched session reads")
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            keys = list(batch)
            try:
                texts = await self._client.mget(keys)
            except BaseException as exc:  # each reader gets the error, the flusher ends
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for key, text in zip(keys, texts, strict=True):
                for future in batch[key]:
                    if not future.done():
                        future.set_result(text)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)


class RedisStore:
    """Sessions in Redis; reads go to Redis every time (another node may have written)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._add = client.register_script(_ADD)
        self._put = client.register_script(_PUT)
        self._reads = _BatchedReads(client)
        # Last text read per id and the snapshot made of it: the same text, the same object.
        self._decoded: dict[str, tuple[str, Session]] = {}

    @unavailable_as_busy
    async def add(self, session: Session) -> None:
        text = session_to_json(session)
        keys = [SESSION_KEY + session.id, INDEX_KEY]
        if not await self._add(keys=keys, args=[text, session.created_at.timestamp(), session.id]):
            raise ValueError(f"session {session.id} is already stored")
        self._decoded[session.id] = (text, session)

    @unavailable_as_busy
    async def get(self, session_id: str) -> Session:
        text = await self._reads.get(SESSION_KEY + session_id)
        if text is None:
            self._decoded.pop(session_id, None)
            raise SessionNotFound(session_id)
        return self._decode(session_id, text)

    @unavailable_as_busy
    async def put(self, session: Session) -> None:
        text = session_to_json(session)
        written = await self._put(
            keys=[SESSION_KEY + session.id], args=[text, session.status.value, *TERMINAL]
        )
        if written == 0:
            raise SessionNotFound(session.id)
        if written < 0:
            raise SnapshotRefused(session.id)
        self._decoded[session.id] = (text, session)

    @unavailable_as_busy
    async def delete(self, session_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(SESSION_KEY + session_id)
            pipe.zrem(INDEX_KEY, session_id)
            await pipe.execute()
        self._decoded.pop(session_id, None)

    @unavailable_as_busy
    async def list(
        self, status: SessionStatus | None = None, limit: int | None = None
    ) -> list[Session]:
        ids = await self._client.zrevrange(INDEX_KEY, 0, -1)
        found: list[Session] = []
        wanted = None if limit is None else max(limit, 0)
        for start in range(0, len(ids), LIST_BATCH):
            batch = ids[start : start + LIST_BATCH]
            texts = await self._client.mget([SESSION_KEY + session_id for session_id in batch])
            for session_id, text in zip(batch, texts, strict=True):
                if text is None:
                    continue  # deleted between the two reads
                session = self._decode(session_id, text)
                if status is None or session.status is status:
                    found.append(session)
                    if wanted is not None and len(found) >= wanted:
                        return found
        return found

    async def close(self) -> None:
        """The client belongs to whoever opened it; the batched reads and snapshots go."""
        await self._reads.close()
        self._decoded.clear()

    def _decode(self, session_id: str, text: str) -> Session:
        cached = self._decoded.get(session_id)
        if cached is not None and cached[0] == text:
            return cached[1]
        session = session_from_json(text)
        self._decoded[session_id] = (text, session)
        return session

    def __repr__(self) -> str:
        return f"<RedisStore decoded={len(self._decoded)}>"
