"""MemoryStore keeps the SessionStore contract the durable store will keep too."""

from datetime import timedelta

import pytest

from server.state.models import SessionNotFound, SessionStatus, utcnow
from server.state.store import MemoryStore, SessionStore
from tests.server.conftest import new_session


@pytest.fixture
async def store():
    store = MemoryStore()
    yield store
    await store.close()


def test_memory_store_is_a_session_store():
    store: SessionStore = MemoryStore()
    assert repr(store) == "<MemoryStore sessions=0>"


async def test_get_returns_what_add_stored(store, data_paths):
    session = new_session(data_paths)
    await store.add(session)
    assert await store.get(session.id) == session


async def test_adding_an_id_twice_is_refused(store, data_paths):
    session = new_session(data_paths)
    await store.add(session)
    with pytest.raises(ValueError):
        await store.add(session)


async def test_unknown_id_is_session_not_found(store):
    with pytest.raises(SessionNotFound):
        await store.get("nope")


async def test_put_replaces_the_snapshot(store, data_paths):
    session = new_session(data_paths)
    await store.add(session)
    await store.put(session.replace(status=SessionStatus.PENDING))
    assert (await store.get(session.id)).status is SessionStatus.PENDING


async def test_put_never_resurrects_a_deleted_session(store, data_paths):
    session = new_session(data_paths)
    await store.add(session)
    await store.delete(session.id)
    with pytest.raises(SessionNotFound):
        await store.put(session.replace(progress=0.5))
    with pytest.raises(SessionNotFound):
        await store.get(session.id)


async def test_deleting_an_unknown_id_is_not_an_error(store):
    await store.delete("nope")


async def test_list_is_newest_first_filtered_and_limited(store, data_paths):
    now = utcnow()
    old, middle, new = (
        new_session(data_paths, created_at=now - timedelta(minutes=minutes))
        for minutes in (30, 20, 10)
    )
    middle = middle.replace(status=SessionStatus.COMPLETED)
    for session in (middle, new, old):
        await store.add(session)
    assert [s.id for s in await store.list()] == [new.id, middle.id, old.id]
    assert [s.id for s in await store.list(limit=2)] == [new.id, middle.id]
    assert [s.id for s in await store.list(status=SessionStatus.UPLOADED)] == [new.id, old.id]
    assert await store.list(status=SessionStatus.FAILED) == []
    assert await store.list(limit=0) == []
