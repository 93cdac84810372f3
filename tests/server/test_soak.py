"""A bounded soak of a real `python -m server`: nothing lost, nothing left over.

Eight clients share one server (real worker, tiny model, MAX_CONCURRENT_JOBS=2) for
SOAK_SECONDS: each uploads a short video (4 s, ~3 MB), then - by a seeded coin - cancels
it, cleans it up, polls it or streams its events (sometimes leaving the stream early) to
the end, and sometimes cleans it up afterwards. Meanwhile a killer SIGKILLs, from outside,
the worker process of a session it sees processing (found as a child of the server in
/proc, matched to its session by the runner's "started (..., pid N)" log line).

Afterwards every session must say what happened to it: cleaned up -> 404 and no files;
a cancel answered 200 -> cancelled; its worker killed -> failed, "killed by signal
SIGKILL" (or completed, if the server had read the worker's last lines before its result:
then the kill may have come after the result); otherwise completed. The list and /metrics
agree; no worker process is left, no file outlives its session, no answer showed a server
path or a traceback, the server's memory did not grow past RSS_GROWTH_BOUND, and it still
serves a job and shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import re
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.http_helpers import V1
from tests.server.server_process import ServerProcess, children_of, command_line, rss_bytes

pytestmark = pytest.mark.slow

SOAK_SECONDS = 18.0
CLIENTS = 8
SEED = 4
# The killer strikes every 1.5-3 s: several kills in a soak, most sessions still complete.
KILL_PAUSE_SECONDS = (1.5, 3.0)
# How long a client waits before it cancels or cleans up (its job may not have started).
ACTION_DELAY_SECONDS = (0.0, 1.5)
POLL_SECONDS = 0.2
# The baseline is taken after a burst of CLIENTS uploads at once (the soak's peak: what
# 8 uploads read in 1 MiB chunks leave with the allocator) and one job. What the soak may
# add on top is per-session state, a few KB each, and SQLite's page cache (2 MiB at most);
# measured: 1.5-3.5 MiB. Keeping any upload's body (3 MB each, ~20 uploads), or a worker's
# pipes and buffers per job, would pass 16 MiB within this soak.
RSS_GROWTH_BOUND = 16 * 1024 * 1024
# Bounds against hangs only.
DRAIN_BOUND_SECONDS = 90.0
REQUEST_BOUND_SECONDS = 60.0
TERMINAL = {"completed", "failed", "cancelled"}
STARTED = re.compile(r"session ([0-9a-f-]{36}) started \(attempt \d+, pid (\d+)")
# The worker's last log line before its result (inference_worker.job), as the server logs it.
LAST_WORDS = "session {} worker: {} frames through the vision tower"


@dataclass
class Tracked:
    """One session as its client saw it."""

    id: str
    cancelled: bool = False  # a cancel answered 200
    cleaned: bool = False  # a cleanup answered 200
    killed: bool = False  # its worker got SIGKILL from the killer

    def expected(self, last_words_heard: bool) -> set[str]:
        """The statuses it may end in. A worker killed after the server had heard its last
        words may have written its result before the kill: only that one may be either."""
        if self.cancelled:
            return {"cancelled"}
        if self.killed:
            return {"failed", "completed"} if last_words_heard else {"failed"}
        return {"completed"}


@dataclass
class Soak:
    server: ServerProcess
    http: aiohttp.ClientSession
    video: bytes
    data_dir: Path
    deadline: float
    forbidden: tuple[str, ...]  # server paths and "Traceback": never in an answer
    sessions: dict[str, Tracked] = field(default_factory=dict)
    done: Counter = field(default_factory=Counter)  # what the clients did, for the report

    def clean(self, text: str) -> str:
        """`text`, once checked to show no server path and no traceback."""
        assert not [word for word in self.forbidden if word in text], text
        return text

    # ---- the clients ------------------------------------------------------------------

    async def client(self, index: int) -> None:
        rng = random.Random(SEED * 100 + index)
        while asyncio.get_running_loop().time() < self.deadline:
            tracked = await self.upload(rng)
            if tracked is None:
                await asyncio.sleep(POLL_SECONDS)
                continue
            roll = rng.random()
            if roll < 0.15:
                await asyncio.sleep(rng.uniform(*ACTION_DELAY_SECONDS))
                await self.cancel(tracked)
            elif roll < 0.3:
                await asyncio.sleep(rng.uniform(*ACTION_DELAY_SECONDS))
                await self.cleanup(tracked)
            if not tracked.cleaned:
                if rng.random() < 0.5:
                    await self.poll(tracked)
                else:
                    await self.stream(tracked, leave_early=rng.random() < 0.3)
                    await self.poll(tracked)
                if rng.random() < 0.3:
                    await self.cleanup(tracked)

    async def upload(self, rng: random.Random, analyze: bool = True) -> Tracked | None:
        """Upload the video (to be analysed, or for the two-step flow); None on a 503."""
        form = aiohttp.FormData()
        if analyze:
            form.add_field("analysis_type", rng.choice(["highlights", "workout"]))
            form.add_field("params", json.dumps({"segment_seconds": 2}))
        form.add_field("file", io.BytesIO(self.video), filename="clip.mp4")
        async with self.http.post(f"{self.server.url}{V1}/upload", data=form) as response:
            if response.status == 503:  # a full queue or too many uploads: a fair answer
                self.done["503"] += 1
                return None
            assert response.status == 202, await response.text()
            tracked = Tracked(json.loads(self.clean(await response.text()))["sessionId"])
        self.sessions[tracked.id] = tracked
        self.done["upload"] += 1
        return tracked

    async def cancel(self, tracked: Tracked) -> None:
        async with self.http.post(f"{self.server.url}{V1}/cancel/{tracked.id}") as response:
            assert response.status in (200, 409), await response.text()
            self.clean(await response.text())
            tracked.cancelled = response.status == 200
        self.done[f"cancel {response.status}"] += 1

    async def cleanup(self, tracked: Tracked) -> None:
        async with self.http.delete(f"{self.server.url}{V1}/cleanup/{tracked.id}") as response:
            assert response.status == 200, await response.text()
            self.clean(await response.text())
            tracked.cleaned = True
        self.done["cleanup"] += 1

    async def status(self, session_id: str) -> dict:
        async with self.http.get(f"{self.server.url}{V1}/status/{session_id}") as response:
            assert response.status == 200, await response.text()
            return json.loads(self.clean(await response.text()))

    async def poll(self, tracked: Tracked) -> dict:
        async with asyncio.timeout(DRAIN_BOUND_SECONDS):
            while True:
                body = await self.status(tracked.id)
                if body["status"] in TERMINAL:
                    break
                await asyncio.sleep(POLL_SECONDS)
        self.done["poll"] += 1
        return body

    async def stream(self, tracked: Tracked, leave_early: bool) -> None:
        """Read the event stream to its terminal event, or leave after the first event."""
        url = f"{self.server.url}{V1}/events/{tracked.id}"
        async with asyncio.timeout(DRAIN_BOUND_SECONDS), self.http.get(url) as response:
            assert response.status == 200, await response.text()
            async for line in response.content:
                self.clean(line.decode())
                if line.startswith(b"event: ") and (
                    leave_early or line[7:].strip().decode() in TERMINAL
                ):
                    break
        self.done["stream left early" if leave_early else "stream"] += 1

    # ---- the killer -------------------------------------------------------------------

    async def killer(self) -> None:
        rng = random.Random(SEED)
        while asyncio.get_running_loop().time() < self.deadline:
            await asyncio.sleep(rng.uniform(*KILL_PAUSE_SECONDS))
            await self.kill_one(rng)

    async def kill_one(self, rng: random.Random) -> None:
        """SIGKILL the worker of one session that is processing, if there is one."""
        pids = {int(pid): session for session, pid in STARTED.findall(self.server.log())}
        workers = [
            pid
            for pid in children_of(self.server.proc.pid)
            if pid in pids and "--probe-service" not in command_line(pid)
        ]
        rng.shuffle(workers)
        for pid in workers:
            tracked = self.sessions.get(pids[pid])
            if tracked is None or tracked.cancelled or tracked.cleaned:
                continue
            body = await self.status(tracked.id)
            if body["status"] != "processing" or body["progress"] >= 0.9:
                continue  # so close to the end that the kill could come after the result
            os.kill(pid, signal.SIGKILL)
            tracked.killed = True
            self.done["kill"] += 1
            return

    # ---- afterwards -------------------------------------------------------------------

    def workers_left(self) -> set[int]:
        """The server's children but its probe processes, which live as long as it does."""
        return {
            pid
            for pid in children_of(self.server.proc.pid)
            if "--probe-service" not in command_line(pid)
        }

    def folders(self) -> set[str]:
        return {
            entry.name
            for kind in ("uploads", "artifacts")
            for entry in (self.data_dir / kind).iterdir()
        }


async def eventually(condition, bound: float = DRAIN_BOUND_SECONDS) -> bool:
    """Whether `condition()` holds within `bound` s (for what nothing announces, like an exit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


async def test_a_soak_with_killed_workers_loses_nothing_and_leaves_nothing(
    tmp_path, make_video, tiny_model_dir
):
    # 4 s, but ~3 MB (sensor noise): a server keeping upload bodies would show it in its RSS.
    video = make_video("clip.mp4", seconds=4.0, width=640, height=480, grain=60).read_bytes()
    data_dir = tmp_path / "data"
    server = ServerProcess(
        data_dir, tiny_model_dir, log_path=tmp_path / "server.log", max_concurrent_jobs=2
    )
    timeout = aiohttp.ClientTimeout(total=REQUEST_BOUND_SECONDS)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await server.ready(http)
            loop = asyncio.get_running_loop()
            forbidden = (str(tmp_path), str(tiny_model_dir), "Traceback")
            soak = Soak(server, http, video, data_dir, loop.time() + SOAK_SECONDS, forbidden)
            # Warm up to the soak's peak, so the baseline holds what a burst of CLIENTS
            # uploads at once leaves with the allocator (the two-step flow: no jobs), and
            # every lazy import (one job through every layer).
            burst = [soak.upload(random.Random(i), analyze=False) for i in range(CLIENTS)]
            for tracked in await asyncio.gather(*burst):
                assert tracked is not None
                await soak.cleanup(tracked)
            first = await soak.upload(random.Random(SEED))
            assert first is not None and (await soak.poll(first))["status"] == "completed"
            rss_before = rss_bytes(server.proc.pid)
            soak.done.clear()

            await asyncio.gather(soak.killer(), *(soak.client(i) for i in range(CLIENTS)))

            report = f"did {dict(soak.done)}; log tail:\n{server.log()[-3000:]}"
            assert soak.done["kill"] >= 2 and soak.done["upload"] >= 10, report
            outcomes: Counter = Counter()
            for tracked in soak.sessions.values():
                async with http.get(f"{server.url}{V1}/status/{tracked.id}") as response:
                    body = json.loads(soak.clean(await response.text()))
                if tracked.cleaned:
                    assert response.status == 404, (tracked, body)
                    outcomes["cleaned up"] += 1
                    continue
                last_words = re.search(LAST_WORDS.format(tracked.id, r"\d+"), server.log())
                expected = tracked.expected(last_words_heard=last_words is not None)
                assert body["status"] in expected, (tracked, body, report)
                if tracked.killed and not tracked.cancelled and body["status"] == "failed":
                    assert "killed by signal SIGKILL" in body["error"], (tracked, body)
                outcomes[body["status"]] += 1

            assert await eventually(lambda: not soak.workers_left()), soak.workers_left()
            kept = {t.id for t in soak.sessions.values() if not t.cleaned}
            async with http.get(f"{server.url}{V1}/sessions?limit=1000") as response:
                listed = json.loads(soak.clean(await response.text()))["sessions"]
            assert {body["sessionId"] for body in listed} == kept
            async with http.get(f"{server.url}/metrics") as response:
                gauges = {
                    sample.labels["status"]: sample.value
                    for family in text_string_to_metric_families(await response.text())
                    for sample in family.samples
                    if sample.name == "smolvlm_sessions"
                }
            assert {status: n for status, n in gauges.items() if n} == {
                status: n for status, n in outcomes.items() if status in TERMINAL
            }
            assert soak.folders() <= kept, soak.folders() - kept  # no orphan, no cleaned files
            for session_id in kept:
                assert (data_dir / "uploads" / session_id / "source.mp4").is_file()
            rss_after = rss_bytes(server.proc.pid)
            growth = rss_after - rss_before
            print(
                f"soak: {dict(soak.done)}; outcomes {dict(outcomes)}; "
                f"server RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
            )
            assert growth < RSS_GROWTH_BOUND, (rss_before, rss_after, report)

            async with http.get(f"{server.url}/health") as response:
                health = await response.json()
            assert health["running"] == 0 and health["queued"] == 0
            last = await soak.upload(random.Random(SEED))
            assert last is not None and (await soak.poll(last))["status"] == "completed"
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log()[-3000:]
