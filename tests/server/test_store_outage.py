"""A store that is away for a moment: SQLite's lock is a `StoreUnavailable`, and a
`Sessions.update` tried again after its publish failed loses no event and repeats no end."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading

import pytest

from server.state.events import EventHub
from server.state.models import SessionStatus
from server.state.patience import StoreUnavailable, outlast
from server.state.redis_connection import StateUnavailable
from server.state.sessions import Sessions
from server.state.sqlite_store import SqliteStore
from server.state.store import MemoryStore
from server.state.webhook_delivery import WebhookDelivery
from tests.server.conftest import WAIT, new_session

# Longer than SQLite's own busy wait (5 s, Python's default), so the write gives up once.
LOCK_SECONDS = 6.0


@contextlib.contextmanager
def write_lock(path, seconds: float):
    """Another connection holds the database's write lock for `seconds`, in a thread."""
    held = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        threading.Event().wait(seconds)
        other.execute("ROLLBACK")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    try:
        yield
    finally:
        thread.join()


@pytest.mark.slow
async def test_a_locked_sqlite_database_is_a_wait_not_a_lost_write(data_paths):
    store = await SqliteStore(data_paths.root / "sessions.db").open()
    try:
        session = new_session(data_paths)
        await store.add(session)
        processing = session.replace(status=SessionStatus.PROCESSING, progress=0.5)
        with write_lock(data_paths.root / "sessions.db", LOCK_SECONDS):
            with pytest.raises(StoreUnavailable):
                await store.put(processing)
            # Readers see what is really stored: the write did not happen.
            assert (await store.get(session.id)).status is SessionStatus.UPLOADED
            stored = asyncio.create_task(
                outlast(lambda: store.put(processing), patience=60, what="test")
            )
            await asyncio.sleep(0.1)
            assert not stored.done()
        await stored
        assert (await store.get(session.id)).progress == 0.5
    finally:
        await store.close()
    reopened = await SqliteStore(data_paths.root / "sessions.db").open()
    assert (await reopened.get(session.id)).status is SessionStatus.PROCESSING
    await reopened.close()


class UnreachableOnce(EventHub):
    """An event hub whose next publish of the event `failing` fails as an unreachable Redis
    does (the event is not appended)."""

    failing: str | None = None

    async def publish(self, session_id, name, data):
        if name == self.failing:
            self.failing = None
            raise StateUnavailable()
        return await super().publish(session_id, name, data)


async def no_position(session_id: str) -> None:
    return None


def sessions_over(hub: EventHub, data_paths) -> Sessions:
    return Sessions(MemoryStore(), hub, data_paths, no_position)


async def names(hub: EventHub, session_id: str) -> list[str]:
    """Every event name of the session's log, oldest first, up to its end."""
    found = []

    async def read() -> None:
        async with contextlib.aclosing(hub.subscribe(session_id, last_event_id=0)) as events:
            async for event in events:
                found.append(event.name)
                if event.is_terminal:
                    return

    await asyncio.wait_for(read(), WAIT)
    return found


@pytest.mark.parametrize("failing", ["status", "completed"])
async def test_an_end_stored_but_not_published_is_published_once_by_the_retry(
    data_paths, failing
):
    hub = UnreachableOnce()
    sessions = sessions_over(hub, data_paths)
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    hub.failing = failing

    async def complete():
        return await sessions.update(session.id, status=SessionStatus.COMPLETED, results={})

    with pytest.raises(StateUnavailable):
        await complete()
    assert (await sessions.get(session.id)).status is SessionStatus.COMPLETED  # stored
    ended = await outlast(complete, patience=5, what="test")

    assert ended.status is SessionStatus.COMPLETED
    log = await names(hub, session.id)
    assert log[-1] == "completed" and log.count("completed") == 1
    assert log[-2] == "status"
    # Once published, a further update of the ended session publishes nothing.
    await complete()
    assert await names(hub, session.id) == log
    await hub.close()


async def test_a_retried_end_tells_that_its_webhook_is_due(data_paths):
    hub = UnreachableOnce()
    sessions = sessions_over(hub, data_paths)
    due = []
    sessions.on_webhook_due(due.append)
    session = await sessions.create(
        new_session(
            data_paths,
            status=SessionStatus.PROCESSING,
            webhook=WebhookDelivery("https://example.com/hook"),
        )
    )
    hub.failing = "completed"

    async def complete():
        return await sessions.update(session.id, status=SessionStatus.COMPLETED, results={})

    with pytest.raises(StateUnavailable):
        await complete()
    assert due == []
    await complete()
    assert due == [session.id]
    await hub.close()
