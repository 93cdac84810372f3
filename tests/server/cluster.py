"""A cluster of real nodes (`python -m server` processes) on one Redis and one DATA_DIR.

Nodes run `tests/fixtures/cluster_worker.py`, which logs every run of a job under
DATA_DIR/runs/<session id>, and hold leases of `LEASE_SECONDS` so that a dead node's job
is taken over within seconds.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server.conftest import FIXTURES, process_alive
from tests.server.http_helpers import video_form
from tests.server.server_process import ServerProcess, children_of

CLUSTER_WORKER = shlex.join([sys.executable, str(FIXTURES / "cluster_worker.py")])
# Short, so take-overs come soon; not shorter, so a loaded machine keeps its leases.
LEASE_SECONDS = 2.0
V1 = "/api/v1/video"
TERMINAL = ("completed", "failed", "cancelled")
# Bounds against hangs only.
BOUND = 60.0


class Cluster:
    """Nodes started on demand, all stopped (SIGTERM, or already killed) at the end."""

    def __init__(self, tmp_path: Path, redis_url: str, http: aiohttp.ClientSession) -> None:
        self.data_dir = tmp_path / "data"
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.http = http
        self.nodes: list[ServerProcess] = []

    async def node(self, role: str, **settings: Any) -> ServerProcess:
        """A started node of `role`, named after its place in the list (`settings` are
        flags of `python -m server`; they may set another lease)."""
        name = f"{role}-{len(self.nodes)}"
        settings.setdefault("node_lease_seconds", LEASE_SECONDS)
        node = ServerProcess(
            self.data_dir,
            self.tmp_path,  # the stand-in worker loads no model
            log_path=self.tmp_path / f"{name}.log",
            redis_url=self.redis_url,
            role=role,
            node_id=name,
            worker_command=CLUSTER_WORKER,
            **settings,
        )
        self.nodes.append(node)
        await node.ready(self.http)
        return node

    def runs(self, session_id: str) -> list[tuple[str, int]]:
        """(`start`|`end`, worker pid) of every run of the session's job so far."""
        log = self.data_dir / "runs" / session_id
        if not log.exists():
            return []
        return [
            (word, int(pid))
            for word, pid in (line.split() for line in log.read_text().split("\n") if line)
        ]

    async def upload(self, node: ServerProcess, video: Path, filename: str, **fields: str) -> str:
        """Upload `video` as `filename` (which picks the stand-in's behaviour); its id."""
        form = video_form(video, filename, **fields)
        async with self.http.post(f"{node.url}{V1}/upload", data=form) as response:
            assert response.status == 202, await response.text()
            return (await response.json())["sessionId"]

    async def job(self, node: ServerProcess, video: Path, filename: str) -> str:
        """Upload `video` as `filename` for a highlights analysis; its session id."""
        return await self.upload(node, video, filename, analysis_type="highlights")

    async def status(self, node: ServerProcess, session_id: str) -> dict[str, Any]:
        async with self.http.get(f"{node.url}{V1}/status/{session_id}") as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def until(self, node: ServerProcess, session_id: str, check) -> dict[str, Any]:
        """Poll `node` until the session's status body satisfies `check` (503s wait too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        while True:
            async with self.http.get(f"{node.url}{V1}/status/{session_id}") as response:
                assert response.status in (200, 503), await response.text()
                body = await response.json()
            if response.status == 200 and check(body):
                return body
            assert loop.time() < deadline, body
            await asyncio.sleep(0.05)

    async def running_pid(self, session_id: str) -> int:
        """The pid of the job's live worker, once it has started."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        while True:
            started = [pid for word, pid in self.runs(session_id) if word == "start"]
            if started and process_alive(started[-1]):
                return started[-1]
            assert loop.time() < deadline, "the job never started"
            await asyncio.sleep(0.05)

    def owner_of(self, worker_pid: int) -> ServerProcess:
        return next(node for node in self.nodes if worker_pid in children_of(node.proc.pid))

    def kill(self, node: ServerProcess) -> None:
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=BOUND)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, str]]:
    """The next `count` events (id, event, data) of an open SSE response."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    while len(events) < count:
        line = (await response.content.readline()).decode().rstrip("\r\n")
        if not line:
            if "event" in current:
                events.append(current)
            current = {}
            continue
        field, _, value = line.partition(": ")
        if field in ("id", "event", "data"):
            current[field] = value
    return events


async def read_to_the_end(response: aiohttp.ClientResponse) -> list[dict[str, str]]:
    """Events of an open SSE response up to and with the terminal one."""
    events: list[dict[str, str]] = []
    while not events or events[-1]["event"] not in TERMINAL:
        events += await read_events(response, 1)
    response.close()
    return events


@pytest.fixture
async def cluster(tmp_path, redis_url) -> AsyncIterator[Cluster]:
    """A cluster on the run's redis-server (emptied); its nodes are stopped at the end."""
    async with aiohttp.ClientSession() as http:
        made = Cluster(tmp_path, redis_url, http)
        try:
            yield made
        finally:
            made.stop()
