"""A store that is away for a moment: SQLite's lock is a `StoreUnavailable` that a job
waits out (in a real server process), a store away for longer than the runner's
patience has the job queued again (never failed), and a `Sessions.update` tried again
after its publish failed loses no event and repeats no end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading

import aiohttp
import pytest

from server.jobs.job_queue import MemoryJobQueue
from server.jobs.runner import STORE_AWAY_STEP, JobRunner
from server.state.events import EventHub
from server.state.models import SessionStatus
from server.state.patience import StoreUnavailable, outlast
from server.state.redis_connection import StateUnavailable
from server.state.sessions import Sessions
from server.state.sqlite_store import SqliteStore
from server.state.store import MemoryStore
from server.state.webhook_delivery import WebhookDelivery
from server.storage.local import LocalFiles
from tests.server.cluster import CLUSTER_WORKER, V1, read_events, read_to_the_end
from tests.server.conftest import FAKE_WORKER, WAIT, Harness, dies, local_job_files, new_session
from tests.server.http_helpers import video_form
from tests.server.server_process import ServerProcess

# Longer than SQLite's own busy wait (5 s, Python's default), so a write gives up once.
LOCK_SECONDS = 6.0
# What the server logs when a job's write begins to wait (server.state.patience).
WAIT_LOG = "waits for the session store"


@contextlib.asynccontextmanager
async def write_lock(path, seconds: float):
    """Another connection holds the database's write lock for `seconds` (as a backup or
    a second process would); the block runs while it is held, the exit waits it out."""
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
    await asyncio.to_thread(held.wait)
    try:
        yield
    finally:
        await asyncio.to_thread(thread.join)


@pytest.mark.slow
async def test_a_locked_sqlite_database_is_a_wait_not_a_lost_write(data_paths):
    store = await SqliteStore(data_paths.root / "sessions.db").open()
    try:
        session = new_session(data_paths)
        await store.add(session)
        processing = session.replace(status=SessionStatus.PROCESSING, progress=0.5)
        async with write_lock(data_paths.root / "sessions.db", LOCK_SECONDS):
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


@pytest.mark.slow
async def test_a_job_completes_while_its_sqlite_database_is_locked_for_a_while(
    tmp_path, sample_video
):
    data_dir = tmp_path / "data"
    server = ServerProcess(
        data_dir, tmp_path, log_path=tmp_path / "server.log", worker_command=CLUSTER_WORKER
    )
    async with aiohttp.ClientSession() as http:
        try:
            await server.ready(http)
            form = video_form(sample_video, "parts16.mp4", analysis_type="highlights")
            async with http.post(f"{server.url}{V1}/upload", data=form) as response:
                assert response.status == 202, await response.text()
                session_id = (await response.json())["sessionId"]
            stream = await http.get(f"{server.url}{V1}/events/{session_id}")
            events: list[dict[str, str]] = []
            while not any(event["event"] == "partial" for event in events):
                events += await read_events(stream, 1)
            async with write_lock(data_dir / "sessions.db", LOCK_SECONDS):
                # Reads are served from memory: a poll is answered while writes wait.
                async with http.get(f"{server.url}{V1}/status/{session_id}") as status:
                    assert status.status == 200
                    assert (await status.json())["status"] == "processing"
            events += await read_to_the_end(stream)
        finally:
            server.stop()

    assert events[-1]["event"] == "completed", events[-1]
    steps = [int(json.loads(e["data"])["item"]["end"]) for e in events if e["event"] == "partial"]
    assert steps == list(range(1, 17)), "a partial was lost or repeated"
    ids = [int(event["id"]) for event in events]
    assert ids == sorted(set(ids))
    runs = (data_dir / "runs" / session_id).read_text().split()[::2]
    assert runs == ["start", "end"], "it ran again"
    assert WAIT_LOG in server.log_path.read_text(), "the lock never made a write wait"


class AwayStore(MemoryStore):
    """A memory store whose writes fail, as a locked SQLite database's do, while `away`."""

    away = False

    async def put(self, session):
        if self.away:
            raise StoreUnavailable()
        await super().put(session)


async def test_a_store_away_longer_than_the_patience_queues_the_job_again(data_paths):
    store, hub, queue = AwayStore(), EventHub(), MemoryJobQueue(10)
    sessions = Sessions(store, hub, LocalFiles(data_paths), queue.position)
    runner = JobRunner(
        sessions,
        queue,
        files=local_job_files(data_paths),
        model="test-model",
        worker_command=FAKE_WORKER,
        store_patience=0.5,
    )
    await runner.start()
    harness = Harness(runner, sessions, hub, queue, store, data_paths)
    try:
        session = await harness.submit("sleep")
        first = await harness.sleeping(session.id)
        store.away = True
        assert await dies(first), "the job kept its worker past the patience"
        # What the store holds is what a restart would find: a job to queue again.
        assert (await sessions.get(session.id)).status is SessionStatus.PROCESSING
        store.away = False
        await harness.until(session.id, lambda body: body["currentStep"] == STORE_AWAY_STEP)
        await harness.until(session.id, lambda body: body["currentStep"] == "Sleeping")
        again = await sessions.get(session.id)
        assert again.status is SessionStatus.PROCESSING and again.attempts == 2
        assert harness.pid_file(session.id, "worker.pid") != first
        assert (await runner.cancel(session.id)).status is SessionStatus.CANCELLED
    finally:
        await runner.close()
        await hub.close()


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
    return Sessions(MemoryStore(), hub, LocalFiles(data_paths), no_position)


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
async def test_an_end_stored_but_not_published_is_published_once_by_the_retry(data_paths, failing):
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
