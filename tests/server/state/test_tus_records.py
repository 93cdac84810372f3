"""The records of tus uploads, on SQLite and on Redis: what is stored comes back whole, an
offset moves only from where the writer saw it, only unfinished uploads expire, and one
request at a time holds an upload's write lock (on Redis, until its holder stops renewing)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from server.app import STORE_FILE
from server.state.redis_connection import StateUnavailable, connect
from server.state.redis_tus_records import (
    FINISHED_RECORD_TTL_SECONDS,
    LOCK_KEY,
    RECORD_KEY,
    RedisTusRecords,
)
from server.state.sqlite_store import SqliteStore
from server.state.sqlite_tus_records import SqliteTusRecords
from server.state.tus_codec import tus_record_from_json, tus_record_to_json
from server.state.tus_records import TusRecord, TusRecords, UploadBusy
from server.storage.files import Resumable
from tests.server.conftest import new_session
from tests.server.redis_server import RedisServer

# Short, so a lapse is quick to see; renewals come every third of it.
LEASE = 0.5
WAIT = 30.0  # only a bound against hangs
NOW = datetime(2030, 5, 1, 12, 0, tzinfo=timezone.utc)


def make_record(upload_id: str = "u1", **changes) -> TusRecord:
    fields = {
        "id": upload_id,
        "length": 100,
        "upload": Resumable(location=f"uploads/{upload_id}/video.mp4", offset=0),
        "expires_at": NOW + timedelta(hours=1),
        "created_at": NOW,
    }
    return TusRecord(**{**fields, **changes})


FULL = make_record(
    "full",
    upload=Resumable(
        "s3://bucket/uploads/full/clip.mp4", 40, handle='{"upload_id":"x","parts":[]}'
    ),
    # An aware time in another zone comes back as the same moment.
    expires_at=datetime(2030, 5, 2, 14, 30, 1, 250, tzinfo=timezone(timedelta(hours=2))),
    filename="ünïcödé clip.mp4",
    analysis_type="highlights",
    params={"min_significance": 4, "make_reel": True, "tags": [], "nested": {"a": [1.5, None]}},
    webhook_url="https://example.com/hook",
    session_id="s-1",
)


@pytest.fixture
async def redis_clients(redis_url):
    """Two clients on one Redis: two nodes, as far as the records go."""
    made = [connect(redis_url), connect(redis_url)]
    yield made
    for client in made:
        await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def nodes(request, tmp_path) -> AsyncIterator[tuple[TusRecords, TusRecords]]:
    """The records as two nodes see them: two nodes on Redis; on SQLite, which one process
    owns, the same records twice."""
    if request.param == "sqlite":
        records = await SqliteTusRecords(tmp_path / STORE_FILE).open()
        yield records, records
        await records.close()
    else:
        redis_url = request.getfixturevalue("redis_url")
        clients = [connect(redis_url), connect(redis_url)]
        yield (
            RedisTusRecords(clients[0], lock_lease_seconds=LEASE),
            RedisTusRecords(clients[1], lock_lease_seconds=LEASE),
        )
        for client in clients:
            await client.aclose()


async def test_every_field_round_trips_and_none_fields_stay_none(nodes):
    first, second = nodes
    bare = make_record("bare")
    await first.create(FULL)
    await first.create(bare)
    assert await second.get("full") == FULL
    got = await second.get("bare")
    assert got == bare
    assert (got.analysis_type, got.webhook_url, got.session_id) == (None, None, None)
    assert got.params == {}
    assert await second.get("never") is None
    with pytest.raises(ValueError):
        await second.create(bare)


def test_the_codec_refuses_a_time_without_a_zone():
    assert tus_record_from_json(tus_record_to_json(FULL)) == FULL
    with pytest.raises(ValueError):
        tus_record_to_json(make_record(created_at=datetime(2030, 5, 1, 12, 0)))


async def test_advance_moves_the_offset_only_from_where_the_writer_saw_it(nodes):
    first, second = nodes
    await first.create(make_record())
    moved = Resumable("uploads/u1/video.mp4", 50, handle="h50")
    assert not await second.advance("u1", 5, moved)
    assert await first.get("u1") == make_record()
    assert await second.advance("u1", 0, moved)
    assert (await first.get("u1")).upload == moved
    assert not await first.advance("u1", 0, Resumable("uploads/u1/video.mp4", 60))
    assert (await second.get("u1")).upload == moved
    assert not await first.advance("never", 0, moved)

    racing = await asyncio.gather(
        first.advance("u1", 50, Resumable("uploads/u1/video.mp4", 70, handle="first")),
        second.advance("u1", 50, Resumable("uploads/u1/video.mp4", 80, handle="second")),
    )
    assert sorted(racing) == [False, True]
    winner = "first" if racing[0] else "second"
    assert (await first.get("u1")).upload.handle == winner


async def test_set_session_keeps_the_upload_and_delete_forgets(nodes):
    first, second = nodes
    await first.create(make_record())
    done = Resumable("uploads/u1/video.mp4", 100)
    assert await first.advance("u1", 0, done)
    await second.set_session("u1", "s-9")
    assert await first.get("u1") == make_record(upload=done, session_id="s-9")
    await second.delete("u1")
    assert await first.get("u1") is None
    await first.delete("u1")  # missing is fine
    await first.set_session("u1", "s-9")  # a deleted record stays deleted
    assert await second.get("u1") is None


async def test_only_unfinished_uploads_past_their_expiry_are_expired(nodes):
    first, second = nodes
    past = NOW - timedelta(minutes=1)
    for upload_id in ("due", "done", "claimed", "gone"):
        await first.create(make_record(upload_id, expires_at=past))
    await first.create(make_record("later", expires_at=NOW + timedelta(minutes=1)))
    await first.create(make_record("empty", length=0, expires_at=past))  # nothing to send
    await first.create(make_record("on-time", expires_at=NOW))  # due at, not before, now
    await first.advance("due", 0, Resumable("uploads/due/video.mp4", 99))
    await first.advance("done", 0, Resumable("uploads/done/video.mp4", 100))
    await first.set_session("claimed", "s-1")
    await first.delete("gone")
    expired = await second.expired(NOW)
    assert [record.id for record in expired] == ["due"]
    assert expired[0].offset == 99


async def test_a_second_writer_is_refused_until_the_first_block_ends(nodes):
    first, second = nodes
    async with first.writing("u1"):
        with pytest.raises(UploadBusy):
            async with second.writing("u1"):
                pass
        async with second.writing("u2"):  # another upload is another lock
            pass
    async with second.writing("u1"):
        pass


async def test_the_lock_is_released_when_the_block_raises(nodes):
    first, second = nodes
    with pytest.raises(RuntimeError, match="disk full"):
        async with first.writing("u1"):
            raise RuntimeError("disk full")
    async with second.writing("u1"):
        pass


async def test_a_redis_lock_is_renewed_while_held_and_lapses_once_renewals_stop(redis_clients):
    first = RedisTusRecords(redis_clients[0], lock_lease_seconds=LEASE)
    second = RedisTusRecords(redis_clients[1], lock_lease_seconds=LEASE)
    key = LOCK_KEY + "u1"
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as second_holds:
        async with first.writing("u1"):
            await asyncio.sleep(LEASE / 10)  # so that a renewal reads as a longer time left
            left = await redis_clients[1].pttl(key)
            deadline = loop.time() + WAIT
            while await redis_clients[1].pttl(key) <= left:  # until a renewal lands
                assert loop.time() < deadline, "the lock was never renewed"
                await asyncio.sleep(0.02)
            with pytest.raises(UploadBusy):
                async with second.writing("u1"):
                    pass
            # The holder's node stops renewing (as if it died): the lease runs out.
            (keeper,) = [t for t in asyncio.all_tasks() if t.get_name() == "tus lock u1"]
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            while True:
                try:
                    await second_holds.enter_async_context(second.writing("u1"))
                    break
                except UploadBusy:
                    assert loop.time() < deadline, "the unrenewed lock never lapsed"
                    await asyncio.sleep(0.05)
        # The first block ended after its lock went to another: it released nothing.
        with pytest.raises(UploadBusy):
            async with first.writing("u1"):
                pass
    async with first.writing("u1"):
        pass


async def test_redis_keeps_a_finished_record_for_a_day_and_an_unfinished_one_until_deleted(
    redis_clients,
):
    records = RedisTusRecords(redis_clients[0], lock_lease_seconds=LEASE)
    await records.create(make_record("open"))
    await records.create(make_record("finished"))
    await records.set_session("finished", "s-1")
    assert await redis_clients[0].pttl(RECORD_KEY + "open") == -1  # no expiry
    ttl = await redis_clients[0].pttl(RECORD_KEY + "finished")
    assert 0 < ttl <= FINISHED_RECORD_TTL_SECONDS * 1000
    await records.advance("finished", 0, Resumable("uploads/finished/video.mp4", 100))
    assert await redis_clients[0].pttl(RECORD_KEY + "finished") > 0  # advance keeps it


async def test_an_unreachable_redis_is_a_503_kind_of_error(tmp_path):
    server = RedisServer(tmp_path / "gone")  # never started: nothing listens on its port
    client = connect(server.url)
    records = RedisTusRecords(client, lock_lease_seconds=LEASE)
    try:
        with pytest.raises(StateUnavailable):
            await records.get("u1")
        with pytest.raises(StateUnavailable):
            async with records.writing("u1"):
                pass
    finally:
        await client.aclose()


async def test_sqlite_records_survive_a_reopen_beside_the_sessions(tmp_path, data_paths):
    path = tmp_path / STORE_FILE
    sessions = await SqliteStore(path).open()
    records = await SqliteTusRecords(path).open()
    session = new_session(data_paths)
    await sessions.add(session)
    await records.create(FULL)
    await records.create(make_record())
    await records.advance("u1", 0, Resumable("uploads/u1/video.mp4", 30, handle="h"))
    await records.close()
    await sessions.close()

    sessions = await SqliteStore(path).open()
    records = await SqliteTusRecords(path).open()
    try:
        assert await records.get("full") == FULL
        assert (await records.get("u1")).upload == Resumable("uploads/u1/video.mp4", 30, "h")
        assert (await sessions.get(session.id)).id == session.id
    finally:
        await records.close()
        await sessions.close()


async def test_unfinished_names_every_upload_without_a_session_whole_or_not(nodes):
    first, second = nodes
    for upload_id, offset in (("partial", 3), ("whole", 100), ("done", 100)):
        upload = Resumable(f"uploads/{upload_id}/video.mp4", offset)
        await first.create(make_record(upload_id, upload=upload))
    await first.set_session("done", "session-1")
    assert await second.unfinished() == {"partial", "whole"}


async def test_sqlite_forgets_a_finished_upload_once_its_expiry_is_past(tmp_path):
    """Redis gives such a record a TTL; SQLite deletes it when the sweep says so."""
    records = await SqliteTusRecords(tmp_path / STORE_FILE).open()
    try:
        whole = Resumable("uploads/done/video.mp4", 100)
        await records.create(make_record("done", upload=whole))
        await records.create(make_record("going", upload=Resumable("uploads/going/v.mp4", 3)))
        await records.set_session("done", "session-1")
        assert await records.forget_finished(NOW) == 0  # not yet past its expiry
        assert await records.forget_finished(NOW + timedelta(hours=2)) == 1
        assert await records.get("done") is None and await records.get("going") is not None
    finally:
        await records.close()
