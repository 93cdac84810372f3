"""SSE fan-out: how long each event of one session takes to reach all of 1,000 subscribers.

What is measured. A session is uploaded (two-step flow), 1,000 event streams are opened to
it (`GET /api/v1/video/events/{id}`), and once every stream has its first event the
analysis is started: the real worker with the tiny model on a five-minute clip (quick:
one minute), which publishes some 70 (quick: 20) `status` and `partial` events, then
`completed`. A separate
client process holds all the streams and notes, for every event id, when each stream
received it (one clock, one process). The delay of an event at a subscriber is its
arrival there minus its earliest arrival at any subscriber, so what is measured is the
fan-out itself: it leaves out the way from the worker to the first write (one wake-up and
one send) and includes the client's own reading, which both servers share alike.

The client is a lean asyncio protocol per stream (it finds `id:` lines in the bytes and
stamps them on arrival) rather than aiohttp's client, which costs several times more per
message and would blur the figure with its own queueing; the row gives its CPU time per
delivered event, the floor under both servers' figures.

The baseline is a bare aiohttp SSE handler in its own process, fed by a publisher that
replays the very schedule the service's events arrived on (the offsets of their first
arrivals) with a status body of the same size, to the same number of streams. Rounds
alternate the two servers; each figure is taken over all events of all rounds.

The model runs in both rounds: in the service's as its job, in the bare app's started by
hand with the same video and params as the publisher starts. Both workers are put at the
lowest CPU priority (nice 19): on two cores a model at full priority takes a core from
the server or the client at random moments, which only adds noise to the tail; at nice 19
it uses what they leave idle, as a model on a GPU would leave the CPU to the server.

Reading the table: ratios are service / bare (lower is better); p99 is over every
(event, subscriber) pair. Every subscriber must receive every event: one missing is an
error, not a slower figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

from bench import servers
from bench.common import row
from bench.servers import HOST, ClientProcess
from inference_worker.tiny_model import build_tiny_model
from tests.media import write_video

SUBSCRIBERS = 1000
ROUNDS, QUICK_ROUNDS = 3, 1
VIDEO_SECONDS, QUICK_VIDEO_SECONDS = 300.0, 60.0
PARAMS = {"segment_seconds": 5}
V1 = "/api/v1/video"
BARE_EVENTS_PATH = "/events"
# The service's listen backlog is 128: connecting in batches below that avoids SYN retries.
CONNECT_BATCH = 100
# A stream that has not connected in this long is broken, not slow.
CONNECT_TIMEOUT_SECONDS = 60.0
# The job itself takes seconds; this only bounds a run whose terminal event never comes.
RUN_TIMEOUT_SECONDS = 300.0
TERMINAL_NAMES = (b"completed", b"failed", b"cancelled")
# The worker appears within a moment of the analyze answer; this bounds a broken start.
WORKER_START_SECONDS = 10.0
CHILD_POLL_SECONDS = 0.01
LOWEST_PRIORITY = 19  # nice value: the model takes only CPU the servers leave idle


def run(quick: bool = False) -> list[dict]:
    """Rounds of fan-out from the service and from the bare app; see the module docstring."""
    rounds = QUICK_ROUNDS if quick else ROUNDS
    seconds = QUICK_VIDEO_SECONDS if quick else VIDEO_SECONDS
    measured: dict[str, list[dict]] = {"service": [], "bare": []}
    servers.raise_open_files_limit(SUBSCRIBERS)  # for the servers, which inherit it
    with tempfile.TemporaryDirectory(prefix="bench-sse-") as tmp:
        tmp_path = Path(tmp)
        model = build_tiny_model(tmp_path / "model")
        video = write_video(tmp_path / "clip.mp4", seconds=seconds, fps=5)
        with (
            servers.service(tmp_path / "data", "--model", str(model)) as service,
            servers.baseline("bench.bench_sse:baseline_app") as bare,
        ):
            for _ in range(rounds):
                fanout = _service_round(service, video)
                measured["service"].append(fanout)
                job = _worker_command(video, model, tmp_path / "by-hand")
                measured["bare"].append(_bare_round(bare, fanout["schedule"], fanout["body"], job))
    return _rows(measured, rounds)


def _rows(measured: dict[str, list[dict]], rounds: int) -> list[dict]:
    delays = {
        name: [d for fanout in runs for d in fanout["delays"]] for name, runs in measured.items()
    }
    events = sum(len(fanout["schedule"]) for fanout in measured["service"])
    runs = measured["service"] + measured["bare"]
    client_cpu = sum(f["client_cpu"] for f in runs) / sum(len(f["delays"]) for f in runs)
    what = f"{SUBSCRIBERS:,} subscribers of one session, {events} events over {rounds} rounds"
    baseline = "bare aiohttp SSE handler, same schedule"
    return [
        row(
            "sse fan-out",
            f"p50 delivery delay after the first subscriber, {what}",
            statistics.median(delays["service"]),
            baseline,
            statistics.median(delays["bare"]),
            "",
        ),
        row(
            "sse fan-out",
            f"p99 delivery delay after the first subscriber, {what} "
            f"(client: {client_cpu * 1e6:.0f} µs CPU per delivery)",
            _p99(delays["service"]),
            baseline,
            _p99(delays["bare"]),
            "",
        ),
    ]


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _service_round(service: servers.ServerProcess, video: Path) -> dict:
    """Subscribe to a fresh session, start its analysis, and collect the fan-out."""
    session_id = servers.upload(service.url, video)
    path = f"{V1}/events/{session_id}"
    with ClientProcess(subscribe, service.port, path, SUBSCRIBERS, signals_ready=True) as client:
        client.wait_ready(CONNECT_TIMEOUT_SECONDS)
        _post_json(
            service, f"{V1}/analyze/{session_id}", {"analysis_type": "highlights", "params": PARAMS}
        )
        _lower_priority(_new_child(service.pid))
        fanout = client.result(RUN_TIMEOUT_SECONDS)
    with urllib.request.urlopen(f"{service.url}{V1}/status/{session_id}") as answer:
        fanout["body"] = answer.read().decode()
    return fanout


def _bare_round(
    bare: servers.ServerProcess, schedule: list[float], body: str, job: list[str]
) -> dict:
    """The same number of streams on the bare app, fed on the service's schedule.

    The same analysis runs meanwhile, started by hand (`job`) as the publisher starts, so
    the bare fan-out competes with the model for the cores as the service's did.
    """
    _post_json(bare, "/reset", {"body": body})
    with ClientProcess(
        subscribe, bare.port, BARE_EVENTS_PATH, SUBSCRIBERS, signals_ready=True
    ) as client:
        client.wait_ready(CONNECT_TIMEOUT_SECONDS)
        worker = subprocess.Popen(
            job, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            _post_json(bare, "/publish", {"schedule": schedule, "body": body})
            _lower_priority(worker.pid)
            fanout = client.result(RUN_TIMEOUT_SECONDS)
            worker.wait(RUN_TIMEOUT_SECONDS)
        finally:
            servers.signal_group(worker.pid, signal.SIGKILL)
            worker.wait()
    return fanout


def _new_child(parent: int) -> int:
    """The pid of the first child process `parent` starts from now on (its job's worker)."""
    deadline = time.monotonic() + WORKER_START_SECONDS
    while time.monotonic() < deadline:
        children = servers.child_pids(parent)
        if children:
            return min(children)
        time.sleep(CHILD_POLL_SECONDS)
    raise RuntimeError(f"no worker process started within {WORKER_START_SECONDS:g} s")


def _lower_priority(worker: int) -> None:
    """Put every thread of the worker's process group at the lowest CPU priority.

    Threads started later inherit it from their parent thread; the second pass catches
    one started while the first was running.
    """
    for _ in range(2):
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PGRP, worker, LOWEST_PRIORITY)
        time.sleep(CHILD_POLL_SECONDS)


def _worker_command(video: Path, model: Path, output_dir: Path) -> list[str]:
    """The service's analysis, as `python -m inference_worker` runs it by hand."""
    return [
        sys.executable,
        "-m",
        "inference_worker",
        "--video",
        str(video),
        "--analysis",
        "highlights",
        "--params",
        json.dumps(PARAMS),
        "--model",
        str(model),
        "--output-dir",
        str(output_dir),
    ]


def _post_json(server: servers.ServerProcess, path: str, payload: Any) -> None:
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        answer.read()


# ---- the client process --------------------------------------------------------------


def subscribe(port: int, path: str, subscribers: int, ready: Any) -> dict:
    """Client process: hold `subscribers` streams until each has a terminal event.

    Sets `ready` once every stream has its first event. Returns the delays of every later
    event at every subscriber (after its first arrival), the offsets of those first
    arrivals from the first one (the schedule), and the CPU seconds this process spent
    from `ready` to the end.
    """
    servers.raise_open_files_limit(subscribers)
    return asyncio.run(_subscribe(port, path, subscribers, ready))


async def _subscribe(port: int, path: str, subscribers: int, ready: Any) -> dict:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    request_bytes = request.encode()
    fan = _Fan(subscribers)
    streams: list[_Stream] = []
    try:
        for start in range(0, subscribers, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, subscribers - start)
            opened = await asyncio.gather(
                *(
                    loop.create_connection(lambda: _Stream(fan, request_bytes), HOST, port)
                    for _ in range(batch)
                )
            )
            streams += [stream for _, stream in opened]
        await asyncio.wait_for(fan.all_connected.wait(), CONNECT_TIMEOUT_SECONDS)
        if fan.failure:
            raise RuntimeError(f"an events request was refused: {fan.failure}")
        first_ids = {stream.arrivals[0][0] for stream in streams}
        ready.set()
        started = time.process_time()
        await asyncio.wait_for(fan.all_ended.wait(), RUN_TIMEOUT_SECONDS)
        client_cpu = time.process_time() - started
    finally:
        for stream in streams:
            stream.close()
    return _fanout(streams, max(first_ids), client_cpu)


def _fanout(streams: list[_Stream], after_id: int, client_cpu: float) -> dict:
    """Delays per (event, subscriber) for the events published after `after_id`."""
    by_event: dict[int, list[float]] = {}
    for stream in streams:
        for event_id, arrived in stream.arrivals:
            if event_id > after_id:
                by_event.setdefault(event_id, []).append(arrived)
    missing = sum(len(streams) - len(times) for times in by_event.values())
    if missing or not by_event:
        raise RuntimeError(f"{missing} deliveries missing over {len(by_event)} events")
    firsts = {event_id: min(times) for event_id, times in by_event.items()}
    origin = min(firsts.values())
    return {
        "delays": [t - firsts[event_id] for event_id, times in by_event.items() for t in times],
        "schedule": sorted(first - origin for first in firsts.values()),
        "client_cpu": client_cpu,
    }


class _Fan:
    """What the streams of one client share: counts of streams connected and ended."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.connected = 0
        self.ended = 0
        self.all_connected = asyncio.Event()
        self.all_ended = asyncio.Event()
        self.failure = ""

    def refused(self, status_line: bytes) -> None:
        """A stream was answered with an error: nothing to wait for any more."""
        self.failure = status_line.decode("latin-1").strip()
        self.all_connected.set()
        self.all_ended.set()

    def stream_connected(self) -> None:
        self.connected += 1
        if self.connected == self.streams:
            self.all_connected.set()

    def stream_ended(self) -> None:
        self.ended += 1
        if self.ended == self.streams:
            self.all_ended.set()


class _Stream(asyncio.Protocol):
    """One event stream: sends its request, stamps each `id:` line as it arrives.

    The body is chunked; chunk-size lines never start with `id:` or `event:`, so reading
    it line by line without undoing the chunking is enough here.
    """

    def __init__(self, fan: _Fan, request: bytes) -> None:
        self.fan = fan
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.head_done = False
        self.ended = False
        self.arrivals: list[tuple[int, float]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        arrived = time.perf_counter()
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if not self.head_done:
                if line.startswith(b"HTTP/1.1") and not line.startswith(b"HTTP/1.1 200"):
                    self.fan.refused(line)
                self.head_done = line == b"\r"
            elif line.startswith(b"id:"):
                self.arrivals.append((int(line[3:]), arrived))
                if len(self.arrivals) == 1:
                    self.fan.stream_connected()
            elif line.startswith(b"event:") and line[6:].strip() in TERMINAL_NAMES:
                self._end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self.transport = None

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self.fan.stream_ended()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---- the baseline app ----------------------------------------------------------------


def baseline_app() -> web.Application:
    """The bare app: one event log, a handler streaming it, and a publisher on a schedule.

    `POST /reset` starts a new log whose first event is the given status body;
    `POST /publish` replays a schedule of offsets (seconds), publishing the body at each,
    the last one as `completed`. Every publish wakes all streams through one
    asyncio.Event, as the service's hub does.
    """
    app = web.Application()
    log: list[bytes] = []
    woken = [asyncio.Event()]
    publisher: list[asyncio.Task[None]] = []

    def publish(body: str, name: str) -> None:
        log.append(f"id: {len(log) + 1}\nevent: {name}\ndata: {body}\n\n".encode())
        woken[0].set()
        woken[0] = asyncio.Event()

    async def reset(request: web.Request) -> web.Response:
        log.clear()
        publish((await request.json())["body"], "status")
        return web.json_response({})

    async def replay(schedule: list[float], body: str) -> None:
        started = asyncio.get_running_loop().time()
        for index, offset in enumerate(schedule):
            await asyncio.sleep(max(0.0, started + offset - asyncio.get_running_loop().time()))
            publish(body, "completed" if index == len(schedule) - 1 else "status")

    async def start(request: web.Request) -> web.Response:
        payload = await request.json()
        publisher[:] = [asyncio.create_task(replay(payload["schedule"], payload["body"]))]
        return web.json_response({})

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = 0
        while True:
            changed = woken[0]
            for message in log[sent:]:
                await response.write(message)
            sent = len(log)
            if b"event: completed" in log[-1]:
                return response
            await changed.wait()

    app.router.add_post("/reset", reset)
    app.router.add_post("/publish", start)
    app.router.add_get(BARE_EVENTS_PATH, events)
    return app


if __name__ == "__main__":
    for result in run():
        print(result)
