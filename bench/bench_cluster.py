"""Cluster benchmarks: what Redis costs a node, and what more nodes bring, on this machine.

Three figures, each against a one-machine baseline measured in the same run:
  * status polls through a node whose sessions live in Redis, against the same polls of a
    SQLite node (bench_http's closed-loop client, 64 connections, rounds alternating; the
    medians, and the node's CPU per answer, which neighbours' load disturbs less);
  * the time from an upload's 202 (answered by an `api` node) to the job starting on an
    idle `worker` node with a warm worker, read by polling the status every 2 ms, against
    the same on one `all` SQLite node;
  * jobs per minute of short tiny-model jobs (a one-second clip) with 1, 2 and 3 worker
    nodes (one job each at a time) behind an `api` node, against one SQLite node running
    one job at a time. Every node and worker shares this machine's cores, so the scaling
    is bounded by them: on two cores a third node adds coordination, not model time.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import redis

from bench import servers
from bench.bench_http import STATUS_PATH, _create_sessions, _measure
from bench.cluster import nodes, redis_server
from bench.common import row
from inference_worker.tiny_model import build_tiny_model
from tests.media import write_video

SESSIONS, QUICK_SESSIONS = 1000, 200
POLL_CONNECTIONS = 64
ROUNDS, QUICK_ROUNDS = 5, 2
WARMUP_SECONDS, WINDOW_SECONDS = 1.0, 4.0
STARTS, QUICK_STARTS = 7, 3
# A warm worker replaced after a job has imported and loaded the tiny model by then.
SETTLE_SECONDS = 4.0
START_POLL_SECONDS = 0.002
JOBS, QUICK_JOBS = 12, 6
WORKER_NODES = (1, 2, 3)
# Bounds against a stuck run only.
JOB_BOUND_SECONDS = 600.0
UPLOAD_CONCURRENCY = 4


def run(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        tmp_path = Path(tmp)
        model_dir = build_tiny_model(tmp_path / "model")
        clip = write_video(tmp_path / "clip.mp4", seconds=1.0).read_bytes()
        port = servers.free_port()
        with redis_server(tmp_path / "redis", port) as url:
            rows = _polls(tmp_path, url, port, clip, quick)
            rows += _start_latency(tmp_path, url, port, model_dir, clip, quick)
            rows += _throughput(tmp_path, url, port, model_dir, clip, quick)
    return rows


def _flush(port: int) -> None:
    with redis.Redis(host=servers.HOST, port=port) as client:
        client.flushall()


def _polls(tmp: Path, url: str, port: int, clip: bytes, quick: bool) -> list[dict]:
    count = QUICK_SESSIONS if quick else SESSIONS
    _flush(port)
    measured: dict[str, list[dict]] = {"redis": [], "sqlite": []}
    with servers.service(tmp / "polls-sqlite") as sqlite_node:
        with nodes(tmp / "polls-redis", url, ["all"]) as (redis_node,):
            paths = {}
            for name, node in (("sqlite", sqlite_node), ("redis", redis_node)):
                bodies = asyncio.run(_create_sessions(node.url, clip, count))
                paths[name] = [STATUS_PATH.format(session_id) for session_id in bodies]
            for round_index in range(QUICK_ROUNDS if quick else ROUNDS):
                order = [("sqlite", sqlite_node), ("redis", redis_node)]
                for name, node in order[:: 1 if round_index % 2 else -1]:
                    result = _measure(
                        node, paths[name], POLL_CONNECTIONS, WARMUP_SECONDS, WINDOW_SECONDS
                    )
                    measured[name].append(result)
    # Neighbours' load moves both figures of a round together: medians of alternating
    # rounds, and the CPU each answer cost the node (Redis's own CPU is another process's).
    rps = {name: statistics.median(r["rps"] for r in results) for name, results in measured.items()}
    cpu = {
        name: statistics.median(r["server_cpu"] / r["rps"] * 1e6 for r in results)
        for name, results in measured.items()
    }
    return [
        row(
            "cluster: status polls",
            f"requests/s of a Redis-backed node, {count:,} sessions, {POLL_CONNECTIONS} "
            "connections (median of rounds; higher is better)",
            rps["redis"],
            "the SQLite node",
            rps["sqlite"],
            ">= 0.8x",
            unit="req/s",
        ),
        row(
            "cluster: status polls",
            "node CPU per answer, Redis-backed node (without redis-server's own CPU)",
            cpu["redis"],
            "the SQLite node",
            cpu["sqlite"],
            "-",
            unit="µs",
        ),
    ]


def _start_latency(
    tmp: Path, url: str, port: int, model_dir: Path, clip: bytes, quick: bool
) -> list[dict]:
    starts = QUICK_STARTS if quick else STARTS
    flags = ["--model", str(model_dir), "--warm-workers", "1", "--max-concurrent-jobs", "1"]
    _flush(port)
    with nodes(tmp / "start-redis", url, ["api", "worker"], flags) as (api, _worker):
        remote = asyncio.run(_starts(api.url, clip, starts))
    with servers.service(tmp / "start-sqlite", *flags) as alone:
        local = asyncio.run(_starts(alone.url, clip, starts))
    return [
        row(
            "cluster: job start",
            f"upload 202 on an api node -> processing on an idle worker node (warm), "
            f"median of {starts}",
            statistics.median(remote),
            "one SQLite node, warm worker",
            statistics.median(local),
            "p50 < 50 ms",
        )
    ]


async def _starts(base: str, clip: bytes, count: int) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession(base) as http:
        for _ in range(count):
            await asyncio.sleep(SETTLE_SECONDS)
            session_id, accepted = await _upload(http, clip, "highlights")
            while True:
                async with http.get(STATUS_PATH.format(session_id)) as answer:
                    status = (await answer.json())["status"]
                if status != "pending":
                    latencies.append(time.perf_counter() - accepted)
                    break
                await asyncio.sleep(START_POLL_SECONDS)
            async with http.post(f"/api/v1/video/cancel/{session_id}") as answer:
                await answer.read()
    return latencies


async def _upload(http: aiohttp.ClientSession, clip: bytes, analysis: str) -> tuple[str, float]:
    form = aiohttp.FormData()
    form.add_field("analysis_type", analysis)
    form.add_field("file", io.BytesIO(clip), filename="clip.mp4", content_type="video/mp4")
    async with http.post("/api/v1/video/upload", data=form) as answer:
        if answer.status != 202:
            raise RuntimeError(f"upload answered {answer.status}: {await answer.text()}")
        accepted = time.perf_counter()
        return (await answer.json())["sessionId"], accepted


def _throughput(
    tmp: Path, url: str, port: int, model_dir: Path, clip: bytes, quick: bool
) -> list[dict]:
    jobs = QUICK_JOBS if quick else JOBS
    flags = ["--model", str(model_dir), "--warm-workers", "1", "--max-concurrent-jobs", "1"]
    flags += ["--max-queued-jobs", str(jobs)]
    with servers.service(tmp / "jobs-sqlite", *flags) as alone:
        time.sleep(SETTLE_SECONDS)
        baseline = asyncio.run(_jobs_per_minute(alone.url, clip, jobs))
    rows = []
    for count in WORKER_NODES:
        _flush(port)
        roles = ["api", *["worker"] * count]
        with nodes(tmp / f"jobs-{count}", url, roles, flags) as started:
            time.sleep(SETTLE_SECONDS)
            per_minute = asyncio.run(_jobs_per_minute(started[0].url, clip, jobs))
        rows.append(
            row(
                "cluster: throughput",
                f"tiny-model jobs/min, {jobs} jobs, api node + {count} worker node(s), "
                "1 job per node (higher is better; 2 cores bound it)",
                per_minute,
                "one SQLite node, 1 job at a time",
                baseline,
                "visible coordination cost",
                unit="jobs/min",
            )
        )
    return rows


async def _jobs_per_minute(base: str, clip: bytes, jobs: int) -> float:
    """Submit `jobs` at once and time them to their end; every one must complete."""
    slots = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    async with aiohttp.ClientSession(base) as http:

        async def submit(n: int) -> str:
            async with slots:
                return (await _upload(http, clip, "workout" if n % 2 else "highlights"))[0]

        started = time.perf_counter()
        ids = await asyncio.gather(*(submit(n) for n in range(jobs)))
        deadline = started + JOB_BOUND_SECONDS
        while True:
            async with http.get("/api/v1/video/sessions", params={"limit": "1000"}) as answer:
                bodies = (await answer.json())["sessions"]
            statuses = {b["sessionId"]: b["status"] for b in bodies if b["sessionId"] in ids}
            if all(s in ("completed", "failed", "cancelled") for s in statuses.values()):
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"jobs did not end in time: {statuses}")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
    failed = [s for s in statuses.values() if s != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not complete: {failed}")
    return jobs / elapsed * 60


if __name__ == "__main__":
    for result in run(quick=True):
        print(result)
