"""`TusRecords` on a cluster: each record a Redis key, so a client resumes on any node.

A record is the codec's JSON under `smolvlm:tus:<id>`. Writes are small Lua scripts:
`create` never overwrites, and `advance` and `set_session` replace the text only if it is
still the text they read (a compare-and-set on the whole record, the offset with it);
when another write came between, they read again, so `advance` answers False only when
the offset moved. A sorted set indexes the unfinished uploads (no session yet, bytes
missing) by expiry for the sweep; a record leaves it when its last byte lands, when it
gets its session, or when it is deleted. Once it has its session, a record lives one
more day (FINISHED_RECORD_TTL_SECONDS): long enough for a client that lost the answer
to its last `PATCH` to ask `HEAD`, and nobody has to delete it.

The write lock of an upload is `smolvlm:tus-lock:<id>`, taken with `SET NX PX` by a
random token and renewed while held, so it lapses within a lease of its node dying.
Redis errors become `StateUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import cast

import redis.asyncio as aioredis

from server.state.redis_connection import (
    KEY_PREFIX,
    REDIS_ERRORS,
    RENEW_LEASE_SCRIPT,
    StateUnavailable,
    raise_if_cancelling,
    unavailable_as_busy,
)
from server.state.tus_codec import tus_record_from_json, tus_record_to_json
from server.state.tus_records import TusRecord, UploadBusy
from server.storage.files import Resumable

log = logging.getLogger(__name__)

RECORD_KEY = KEY_PREFIX + "tus:"
LOCK_KEY = KEY_PREFIX + "tus-lock:"
# Uploads with bytes still to come and no session, scored by their expiry (epoch seconds).
UNFINISHED_KEY = KEY_PREFIX + "tus-unfinished"
FINISHED_RECORD_TTL_SECONDS = 24 * 3600
# A holder renews its lock this many times per lease: a missed renewal or two is no loss.
RENEWALS_PER_LEASE = 3
# MGET this many records per round trip when sweeping.
READ_BATCH = 500

# What follows each write of a record (ARGV: 1 text, 2 id, 3 unfinished, 4 expiry score,
# 5 ttl in ms or 0): its time to live, and its place in the index of unfinished uploads.
_FILE_AWAY = """
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return 1
"""
_CREATE = (
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
"""
    + _FILE_AWAY
)
# ARGV[6]: the text the caller read and changed; anything else there now wins.
_REPLACE = (
    """
if redis.call('GET', KEYS[1]) ~= ARGV[6] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
"""
    + _FILE_AWAY
)
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisTusRecords:
    """The records of resumable uploads in Redis, shared by every node.

    `lock_lease_seconds` is how long a write lock holds unrenewed: the longest a request
    of a dead node keeps others from resuming its upload.
    """

    def __init__(self, client: aioredis.Redis, *, lock_lease_seconds: float) -> None:
        if lock_lease_seconds <= 0:
            raise ValueError("lock_lease_seconds must be positive")
        self._client = client
        self._lease_seconds = lock_lease_seconds
        self._lease_ms = max(1, int(lock_lease_seconds * 1000))
        self._create = client.register_script(_CREATE)
        self._replace = client.register_script(_REPLACE)
        self._renew = client.register_script(RENEW_LEASE_SCRIPT)
        self._release = client.register_script(_RELEASE)

    @unavailable_as_busy
    async def create(self, record: TusRecord) -> None:
        """Store a new record; ValueError if its id is stored already."""
        args = [tus_record_to_json(record), *_filing(record)]
        if not await self._create(keys=[RECORD_KEY + record.id, UNFINISHED_KEY], args=args):
            raise ValueError(f"tus upload {record.id} is already stored")

    @unavailable_as_busy
    async def get(self, upload_id: str) -> TusRecord | None:
        text = await self._client.get(RECORD_KEY + upload_id)
        return None if text is None else tus_record_from_json(text)

    @unavailable_as_busy
    async def advance(self, upload_id: str, expected_offset: int, upload: Resumable) -> bool:
        def moved(record: TusRecord) -> TusRecord | None:
            return replace(record, upload=upload) if record.offset == expected_offset else None

        return await self._change(upload_id, moved)

    @unavailable_as_busy
    async def set_session(self, upload_id: str, session_id: str) -> None:
        """Note the session; a record deleted meanwhile stays deleted."""
        await self._change(upload_id, lambda record: replace(record, session_id=session_id))

    async def _change(
        self, upload_id: str, change: Callable[[TusRecord], TusRecord | None]
    ) -> bool:
        """Store `change(record)` in place of the record; False if there is none or
        `change` gives None. Read again if another write lands between read and write."""
        key = RECORD_KEY + upload_id
        while True:
            text = await self._client.get(key)
            if text is None:
                return False
            changed = change(tus_record_from_json(text))
            if changed is None:
                return False
            args = [tus_record_to_json(changed), *_filing(changed), text]
            if await self._replace(keys=[key, UNFINISHED_KEY], args=args):
                return True

    @unavailable_as_busy
    async def delete(self, upload_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(RECORD_KEY + upload_id)
            pipe.zrem(UNFINISHED_KEY, upload_id)
            await pipe.execute()

    @unavailable_as_busy
    async def expired(self, now: datetime) -> list[TusRecord]:
        # Scores are floats: take the boundary in, and let the exact times decide.
        ids = cast(
            list[str], await self._client.zrangebyscore(UNFINISHED_KEY, "-inf", now.timestamp())
        )
        found: list[TusRecord] = []
        for start in range(0, len(ids), READ_BATCH):
            batch = ids[start : start + READ_BATCH]
            texts = await self._client.mget([RECORD_KEY + upload_id for upload_id in batch])
            for text in texts:
                if text is None:
                    continue  # deleted between the two reads
                record = tus_record_from_json(text)
                if _unfinished(record) and record.expires_at < now:
                    found.append(record)
        return found

    async def forget_finished(self, now: datetime) -> int:
        return 0  # a finished record carries its own TTL (FINISHED_RECORD_TTL_SECONDS)

    @unavailable_as_busy
    async def unfinished(self) -> set[str]:
        """Every record with no session yet, the whole ones too (the index has only those
        that can expire): a scan, as the sweep calls this once a round."""
        found: set[str] = set()
        async for key in self._client.scan_iter(match=RECORD_KEY + "*", count=500):
            text = await self._client.get(key)
            if text is not None and tus_record_from_json(text).session_id is None:
                found.add(str(key.decode() if isinstance(key, bytes) else key)[len(RECORD_KEY) :])
        return found

    @asynccontextmanager
    async def writing(self, upload_id: str) -> AsyncIterator[None]:
        """Hold the upload's write lock, renewed every lease/RENEWALS_PER_LEASE.

        If the lock is lost anyway (Redis away for a whole lease, then another request
        took it), the block is not stopped: the record's compare-and-set lets only one
        of the two writers move the upload on.
        """
        key = LOCK_KEY + upload_id
        token = uuid.uuid4().hex
        try:
            taken = await self._client.set(key, token, nx=True, px=self._lease_ms)
        except REDIS_ERRORS as exc:
            raise StateUnavailable() from exc
        if not taken:
            raise UploadBusy(upload_id)
        keeper = asyncio.create_task(self._keep(key, token), name=f"tus lock {upload_id}")
        try:
            yield
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            try:
                await self._release(keys=[key], args=[token])
            except REDIS_ERRORS as exc:
                log.warning("tus upload %s: lock not released (%s); it lapses", upload_id, exc)

    async def _keep(self, key: str, token: str) -> None:
        """Renew the lock until cancelled; stop once another holder has it."""
        away = False
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._lease_seconds / RENEWALS_PER_LEASE)
            try:
                held = await self._renew(keys=[key], args=[token, self._lease_ms])
            except REDIS_ERRORS as exc:
                if not away:
                    log.warning("%s: renewal waits for Redis (%s)", key, exc)
                away = True
                continue
            away = False
            if not held:
                log.warning("%s: lapsed and taken by another request", key)
                return

    def __repr__(self) -> str:
        return f"<RedisTusRecords lease={self._lease_ms} ms>"


def _unfinished(record: TusRecord) -> bool:
    """Bytes are still to come and no session was made: the upload can expire."""
    return record.session_id is None and not record.complete


def _filing(record: TusRecord) -> list[str | int | float]:
    """The scripts' ARGV 2-5 for `record`: id, unfinished, expiry score, ttl (ms, or 0)."""
    ttl_ms = FINISHED_RECORD_TTL_SECONDS * 1000 if record.session_id is not None else 0
    return [record.id, int(_unfinished(record)), record.expires_at.timestamp(), ttl_ms]
