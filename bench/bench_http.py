"""Status polling: requests/s and p99 latency of `GET /status/{id}`, against a bare aiohttp app.

What is measured. The service (`python -m server`, its own process) holds 1,000 sessions
(quick: 200), made through the public API by two-step uploads of a one-second clip (status
`uploaded`, so no worker runs). 64 and then 512 keep-alive connections poll the status of
those sessions in turn, each sending its next request as soon as the previous answer is in
(a closed loop, like browsers polling). Requests/s is the count of answers in a timed
window after a warm-up, divided by the window; latency is per request, send to last byte.

The baseline is a bare aiohttp app in the same kind of process, serving the same route:
a handler that looks the id up in a dict holding the very status bodies the service
returned and answers `web.json_response(body)`. So the bodies on the wire are the same;
what the service adds is its middlewares, the id check, the store read, building the
body, and its access log.

The load comes from a separate client process, so it does not share a core with the
server. The client is a lean asyncio protocol (pre-built requests, a Content-Length
parser) rather than aiohttp's client: it needs a fraction of a core, so the server is the
bottleneck. The row for each service figure says the server's and the client's CPU use
during the window; the server near 100% is what makes the figure its own throughput.

Reading the table: the throughput ratio is service / bare (goal >= 0.8x); the p99 ratio is
service / bare latency (lower is better). On a shared machine a neighbour's load takes CPU
from whichever server is being measured at that moment, so rounds alternate the two
servers and throughput and p99 are each server's best round. The third row divides each
round's answers by the CPU seconds the server process used in its window: the same cost
ratio, blind to how much CPU neighbours left over, and the steadier of the two.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench import servers
from bench.common import row
from bench.servers import HOST, ClientProcess
from tests.media import write_video

STATUS_PATH = "/api/v1/video/status/{}"
SESSIONS, QUICK_SESSIONS = 1000, 200
CONCURRENCY = (64, 512)
ROUNDS, QUICK_ROUNDS = 3, 2
WARMUP_SECONDS, QUICK_WARMUP_SECONDS = 2.0, 1.0
WINDOW_SECONDS, QUICK_WINDOW_SECONDS = 6.0, 3.0
# Each upload waits on a probe child; a few at once keep both cores busy without a queue.
UPLOAD_CONCURRENCY = 4
# The server's listen backlog is 128: connecting in batches below that avoids SYN retries.
CONNECT_BATCH = 64
# Answers still in flight when the window closes; only bounds a stuck server.
DRAIN_SECONDS = 10.0
CLIENT_TIMEOUT_SECONDS = 120.0
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


def run(quick: bool = False) -> list[dict]:
    """Measure both servers at each concurrency, interleaved; see the module docstring."""
    count = QUICK_SESSIONS if quick else SESSIONS
    rounds = QUICK_ROUNDS if quick else ROUNDS
    timing = (
        (QUICK_WARMUP_SECONDS, QUICK_WINDOW_SECONDS) if quick else (WARMUP_SECONDS, WINDOW_SECONDS)
    )
    measured: dict[tuple[str, int], list[dict]] = {}
    servers.raise_open_files_limit(max(CONCURRENCY))  # for the servers, which inherit it
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        tmp_path = Path(tmp)
        clip = write_video(tmp_path / "clip.mp4", seconds=1.0)
        with servers.service(tmp_path / "data") as service:
            bodies = asyncio.run(_create_sessions(service.url, clip.read_bytes(), count))
            bodies_file = tmp_path / "bodies.json"
            bodies_file.write_text(json.dumps(bodies))
            paths = [STATUS_PATH.format(session_id) for session_id in bodies]
            with servers.baseline("bench.bench_http:baseline_app", str(bodies_file)) as bare:
                for round_index in range(rounds):
                    pair = [("bare", bare), ("service", service)]
                    if round_index % 2:
                        pair.reverse()  # neither side always goes first
                    for connections in CONCURRENCY:
                        for name, server in pair:
                            result = _measure(server, paths, connections, *timing)
                            measured.setdefault((name, connections), []).append(result)
    rows = []
    for connections in CONCURRENCY:
        rows += _rows(
            f"{count:,} sessions, {connections} connections",
            measured["service", connections],
            measured["bare", connections],
        )
    return rows


def _measure(
    server: servers.ServerProcess, paths: list[str], connections: int, warmup: float, window: float
) -> dict:
    with ClientProcess(
        poll_load, server.port, server.pid, paths, connections, warmup, window
    ) as client:
        return client.result(CLIENT_TIMEOUT_SECONDS)


def _rows(what: str, service: list[dict], bare: list[dict]) -> list[dict]:
    """Throughput and p99 (best round of each server), and requests per server CPU-second."""
    rounds = len(service)
    best = max(service, key=lambda result: result["rps"])
    usage = f"server CPU {best['server_cpu']:.0%}, client CPU {best['client_cpu']:.0%}"
    baseline = "bare aiohttp dict lookup"
    return [
        row(
            "status polling",
            f"requests/s, {what}, best of {rounds} ({usage})",
            best["rps"],
            baseline,
            max(result["rps"] for result in bare),
            ">= 0.8x",
            unit="req/s",
        ),
        row(
            "status polling",
            f"p99 latency, {what}, best of {rounds}",
            min(result["p99"] for result in service),
            baseline,
            min(result["p99"] for result in bare),
            "",
        ),
        row(
            "status polling",
            f"requests per CPU-second of the server, {what}, median of {rounds}",
            statistics.median(result["rps"] / result["server_cpu"] for result in service),
            baseline,
            statistics.median(result["rps"] / result["server_cpu"] for result in bare),
            ">= 0.8x",
            unit="req/CPU-s",
        ),
    ]


def baseline_app(bodies_file: str) -> web.Application:
    """The bare app: the status route answers from a dict of ready-made bodies."""
    bodies = json.loads(Path(bodies_file).read_text())

    async def status(request: web.Request) -> web.Response:
        body = bodies.get(request.match_info["sessionId"])
        if body is None:
            raise web.HTTPNotFound()
        return web.json_response(body)

    app = web.Application()
    app.router.add_get(STATUS_PATH.format("{sessionId}"), status)
    return app


async def _create_sessions(url: str, content: bytes, count: int) -> dict[str, dict]:
    """`count` two-step uploads of the video `content`; their status bodies by session id."""
    slots = asyncio.Semaphore(UPLOAD_CONCURRENCY)
    async with aiohttp.ClientSession(url) as client:

        async def upload() -> str:
            form = aiohttp.FormData()
            form.add_field("file", io.BytesIO(content), filename="clip.mp4")
            async with slots, client.post("/api/v1/video/upload", data=form) as answer:
                if answer.status != 202:
                    raise RuntimeError(f"upload answered {answer.status}: {await answer.text()}")
                return (await answer.json())["sessionId"]

        ids = await asyncio.gather(*(upload() for _ in range(count)))
        bodies = {}
        for session_id in ids:
            async with client.get(STATUS_PATH.format(session_id)) as answer:
                bodies[session_id] = await answer.json()
    return bodies


def poll_load(
    port: int, server_pid: int, paths: list[str], connections: int, warmup: float, window: float
) -> dict:
    """Client process: closed-loop polling of `paths` over `connections` connections.

    Returns the requests/s and the p99 latency of the window, and the CPU share the
    server and this client used during it.
    """
    servers.raise_open_files_limit(connections)
    return asyncio.run(_poll(port, server_pid, paths, connections, warmup, window))


async def _poll(
    port: int, server_pid: int, paths: list[str], connections: int, warmup: float, window: float
) -> dict:
    loop = asyncio.get_running_loop()
    load = _Load([f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode() for path in paths])
    pollers: list[_Poller] = []
    try:
        for start in range(0, connections, CONNECT_BATCH):
            batch = min(CONNECT_BATCH, connections - start)
            opened = await asyncio.gather(
                *(loop.create_connection(lambda: _Poller(load), HOST, port) for _ in range(batch))
            )
            pollers += [poller for _, poller in opened]
        load.connections = len(pollers)
        for poller in pollers:
            poller.send()
        await asyncio.sleep(warmup)
        load.measuring = True
        started = time.perf_counter()
        server_cpu = servers.cpu_seconds(server_pid)
        client_cpu = time.process_time()
        await asyncio.sleep(window)
        load.measuring, load.stopping = False, True
        elapsed = time.perf_counter() - started
        server_cpu = servers.cpu_seconds(server_pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        await asyncio.wait_for(load.all_idle.wait(), DRAIN_SECONDS)
    finally:
        for poller in pollers:
            poller.close()
    if load.failures:
        raise RuntimeError(f"{load.failures} answers were not 200, e.g. {load.failure!r}")
    latencies = load.latencies
    return {
        "rps": len(latencies) / elapsed,
        "p99": statistics.quantiles(latencies, n=100, method="inclusive")[98],
        "server_cpu": server_cpu / elapsed,
        "client_cpu": client_cpu / elapsed,
    }


class _Load:
    """What the pollers share: the requests to take in turn, and what was measured."""

    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.next_index = 0
        self.measuring = False
        self.stopping = False
        self.latencies: list[float] = []
        self.failures = 0
        self.failure = b""
        self.connections = 0
        self.idle = 0  # connections done: their last answer is in, or they were lost
        self.all_idle = asyncio.Event()

    def next_request(self) -> bytes:
        request = self.requests[self.next_index]
        self.next_index = (self.next_index + 1) % len(self.requests)
        return request

    def answered(self, head: bytes, latency: float) -> bool:
        """Record one answer; True if its connection should send the next request."""
        if not head.startswith(b"HTTP/1.1 200"):
            self.failures += 1
            self.failure = head[:200]
        if self.measuring:
            self.latencies.append(latency)
        return not self.stopping

    def went_idle(self) -> None:
        self.idle += 1
        if self.idle >= self.connections:
            self.all_idle.set()


class _Poller(asyncio.Protocol):
    """One keep-alive connection: send a request, read its answer, send the next."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.load.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buffer[:head_end])
        length = _CONTENT_LENGTH.search(head)
        body_end = head_end + 4 + (int(length.group(1)) if length else 0)
        if len(self.buffer) < body_end:
            return
        latency = time.perf_counter() - self.sent_at
        del self.buffer[:body_end]
        if self.load.answered(head, latency):
            self.send()
        else:
            self.done = True
            self.load.went_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.done = True
            self.load.went_idle()
            self.load.failures += 1
            self.load.failure = f"connection lost: {exc!r}".encode()
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


if __name__ == "__main__":
    for result in run():
        print(result)
