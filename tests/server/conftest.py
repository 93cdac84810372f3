"""Factories for the server core: sessions and runners on a temporary DATA_DIR.

Each factory closes what it made when the test ends. Runners run the real `JobRunner`
against `tests/fixtures/fake_worker.py`, a tiny real child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from protocol import AnalysisType, VideoInfo
from server.jobs.job_files import JobFiles
from server.jobs.job_queue import MemoryJobQueue
from server.jobs.runner import JobRunner
from server.state.events import EventHub
from server.state.models import Session, SessionStatus
from server.state.sessions import Sessions
from server.state.store import MemoryStore
from server.storage.local import LocalFiles
from server.storage.paths import DataPaths
from tests.server.s3_server import S3Server, running_s3_server

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FAKE_WORKER = (sys.executable, str(FIXTURES / "fake_worker.py"))
FAKE_PROBE = FIXTURES / "fake_probe.py"
# Only a bound against hangs: a passing test never comes near it.
WAIT = 30.0


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 server for the test module (SeaweedFS, started by s3_server.py), on
    free loopback ports, with its bucket."""
    with running_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def local_job_files(paths: DataPaths) -> JobFiles:
    """A runner's job files under DATA_DIR, as a node without STORAGE_URL has them."""
    return JobFiles(LocalFiles(paths), paths.scratch)


def new_session(paths: DataPaths, **fields: Any) -> Session:
    """An `uploaded` session with an (empty) upload file under `paths`."""
    session_id = str(uuid.uuid4())
    upload = paths.upload_dir(session_id) / "video.mp4"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(b"")
    fields.setdefault("status", SessionStatus.UPLOADED)
    return Session(
        id=session_id,
        video=VideoInfo("clip.mp4", 12.0, 160, 120, 25.0),
        upload_path=str(upload),
        output_dir=str(paths.output_dir(session_id)),
        **fields,
    )


def process_alive(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc").is_dir():
        return True  # no /proc (macOS): the signal got through, so it exists
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        # Reaped between the open and the read: the read itself fails with ESRCH.
        return False
    return state != "Z"


async def eventually(condition: Callable[[], bool]) -> bool:
    """Whether `condition()` holds within WAIT seconds; polled, for what nothing signals."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def dies(pid: int) -> bool:
    """Whether `pid` dies within WAIT seconds (for deaths nothing in the server waits for)."""
    return await eventually(lambda: not process_alive(pid))


@pytest.fixture
def data_paths(tmp_path) -> DataPaths:
    paths = DataPaths(tmp_path / "data")
    paths.create()
    return paths


@pytest.fixture
async def make_sessions(data_paths):
    """Factory: `make_sessions(queue_position=...)` -> Sessions over a MemoryStore and a hub."""
    made: list[tuple[MemoryStore, EventHub]] = []

    def make(queue_position: Callable[[str], int | None] = lambda _id: None) -> Sessions:
        store, hub = MemoryStore(), EventHub()
        made.append((store, hub))

        async def position(session_id: str) -> int | None:
            return queue_position(session_id)

        return Sessions(store, hub, LocalFiles(data_paths), position)

    yield make
    for store, hub in made:
        await hub.close()
        await store.close()


@dataclass
class Harness:
    """A started JobRunner with the parts it was built from, and helpers to drive it."""

    runner: JobRunner
    sessions: Sessions
    hub: EventHub
    queue: MemoryJobQueue
    store: MemoryStore
    paths: DataPaths

    async def upload(self) -> Session:
        """Create an `uploaded` session."""
        return await self.sessions.create(new_session(self.paths))

    async def submit(self, mode: str = "succeed") -> Session:
        """Upload and submit a job that the fake worker runs in `mode`."""
        session = await self.upload()
        return await self.runner.submit(session.id, AnalysisType.HIGHLIGHTS, {"mode": mode})

    async def finished(self, session_id: str) -> Session:
        """The session once terminal."""
        return await asyncio.wait_for(self.runner.wait(session_id), WAIT)

    async def until(self, session_id: str, predicate: Callable[[dict], bool]) -> dict:
        """The first status body (current or future) of the session that satisfies predicate."""

        async def watch() -> dict:
            async with contextlib.aclosing(self.hub.subscribe(session_id)) as events:
                async for event in events:
                    if event.name == "status" and predicate(event.data):
                        return event.data
                    if event.is_terminal:
                        raise AssertionError(f"session ended first: {event.data}")
            raise AssertionError("subscription ended")

        return await asyncio.wait_for(watch(), WAIT)

    async def sleeping(self, session_id: str) -> int:
        """Wait until the fake worker runs (in a mode that sleeps); its pid."""
        await self.until(session_id, lambda body: body["currentStep"] == "Sleeping")
        return self.pid_file(session_id, "worker.pid")

    def pid_file(self, session_id: str, name: str) -> int:
        return int((self.paths.output_dir(session_id) / name).read_text())


@pytest.fixture
async def make_runner(data_paths):
    """Factory: `await make_runner(max_concurrent=..., ...)` -> a started Harness (on one
    machine: a MemoryJobQueue and the in-process cancel channel)."""
    made: list[Harness] = []

    async def make(
        *,
        max_concurrent: int = 2,
        max_queued: int = 10,
        job_timeout: float | None = None,
        worker_command: tuple[str, ...] = FAKE_WORKER,
        orphan_sweep_seconds: float = 60.0,
    ) -> Harness:
        queue = MemoryJobQueue(max_queued)
        store, hub = MemoryStore(), EventHub()
        sessions = Sessions(store, hub, LocalFiles(data_paths), queue.position)
        runner = JobRunner(
            sessions,
            queue,
            files=local_job_files(data_paths),
            model="test-model",
            max_concurrent=max_concurrent,
            job_timeout=job_timeout,
            worker_command=worker_command,
            orphan_sweep_seconds=orphan_sweep_seconds,
        )
        await runner.start()
        harness = Harness(runner, sessions, hub, queue, store, data_paths)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.runner.close()
        await harness.hub.close()
        await harness.store.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the run (append-only, noeviction), on a free port."""
    from tests.server.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The URL of the run's redis-server, emptied for this test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, monkeypatch) -> str:
    """Runs a test module's apps on each backend: SQLite and memory, then Redis.

    A module opts in with `pytestmark = pytest.mark.usefixtures("backend")`; its tests
    build apps through `http_helpers.make_config`, which adds these settings.
    """
    from tests.server import http_helpers

    if request.param == "redis":
        settings = {"redis_url": request.getfixturevalue("redis_url")}
        monkeypatch.setattr(http_helpers, "BACKEND_SETTINGS", settings)
    return request.param


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def module_backend(request) -> Iterator[str]:
    """`backend` for a module whose servers live as long as the module: its tests run once
    on SQLite and memory, then once on Redis (emptied first), with servers made for each.

    A module opts in with `pytest.mark.usefixtures("module_backend")` and makes its servers
    in fixtures that depend on this one.
    """
    from tests.server import http_helpers

    with pytest.MonkeyPatch.context() as patch:
        if request.param == "redis":
            server = request.getfixturevalue("redis_server")
            with server.client() as client:
                client.flushall()
            patch.setattr(http_helpers, "BACKEND_SETTINGS", {"redis_url": server.url})
        yield request.param
