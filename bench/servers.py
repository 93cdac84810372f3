"""Processes for the server benchmarks: the service and bare baseline apps on loopback ports.

Each server under test runs as its own process in its own process group, started the same
way for the service (`python -m server`) and for a baseline (`python -m bench.servers
MODULE:FACTORY`, which serves the bare aiohttp app the factory builds). Both are ready once
`GET /health` answers 200, and both are stopped by SIGTERM to the group, then SIGKILL.
Load clients run in a child process of their own (`ClientProcess`), so that a client
and the server it measures each get one of this machine's two cores.

Also here: what /proc tells about a process (resident memory, CPU time, children), for
the figures that need more than a stopwatch.

    python -m bench.servers [--port P] MODULE:FACTORY [ARGUMENT]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"  # benchmarks only ever talk to loopback
REPO = Path(__file__).resolve().parents[1]
# A server imports aiohttp and the app in well under a second; a busy machine may take more.
START_TIMEOUT_SECONDS = 60.0
# aiohttp's shutdown waits for open requests; the service bounds that wait at 10 s itself.
STOP_GRACE_SECONDS = 15.0
# SIGKILL cannot be refused: this only bounds a process stuck in the kernel.
KILL_REAP_SECONDS = 5.0
HEALTH_POLL_SECONDS = 0.05
# How often a wait for jobs to be under way asks for their status.
RUNNING_POLL_SECONDS = 0.25
# How often a wait for a client's readiness checks that the client is still alive.
CLIENT_POLL_SECONDS = 0.1
# Room for what a process has open besides its connections (modules, pipes, logs).
FILES_BESIDES_CONNECTIONS = 256
# Linux: writing 5 to /proc/PID/clear_refs resets that process's peak RSS (VmHWM).
RESET_PEAK_RSS = b"5"


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process, in bytes: now (VmRSS) and the peak (VmHWM)."""

    rss: int
    peak: int


def memory(pid: int) -> Memory:
    """VmRSS and VmHWM of `pid` from /proc/PID/status."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024  # reported in kB
    return Memory(rss=fields["VmRSS"], peak=fields["VmHWM"])


def reset_peak_memory(pid: int) -> bool:
    """Make VmHWM start again from the current RSS; False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "wb") as refs:
            refs.write(RESET_PEAK_RSS)
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far (threads included)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (zombies left out)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class ServerProcess:
    """A server started in its own process group; `stop()` ends the whole group."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str] | None) -> None:
        self.name = name
        self.port = free_port()
        self._log = tempfile.TemporaryFile(prefix="bench-server-log-")
        self._proc = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self) -> None:
        """Return once `GET /health` answers 200; RuntimeError with the log if it never does."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            time.sleep(HEALTH_POLL_SECONDS)
        raise RuntimeError(f"{self.name} did not answer /health in time: {self.log()}")

    def log(self, tail_bytes: int = 4000) -> str:
        """The end of what the server printed (it logs to one file, stdout and stderr alike)."""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - tail_bytes))
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM to the group, a grace period, then SIGKILL to whatever is left of it."""
        if self._proc.poll() is None:
            signal_group(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                pass  # killed below with the rest of the group
        # Also reaches workers a killed server could not stop itself.
        signal_group(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(KILL_REAP_SECONDS)
        self._log.close()

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name} pid={self.pid} port={self.port}>"


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """Signal every process of the group `pgid`; nothing if the group is gone already."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


@contextlib.contextmanager
def running(
    name: str, command: Sequence[str], env: dict[str, str] | None
) -> Iterator[ServerProcess]:
    """Start a server process, wait until it answers, and stop it (and its group) afterwards."""
    server = ServerProcess(name, command, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def service(
    data_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[ServerProcess]:
    """`python -m server` on a free loopback port with `data_dir` and `flags` (a context).

    No warm worker, unless `flags` ask for one: an idle worker would load a model and
    take CPU from the figures that do not involve a job.
    """
    command = [
        sys.executable,
        "-m",
        "server",
        "--host",
        HOST,
        "--data-dir",
        str(data_dir),
        "--warm-workers",
        "0",
        *flags,
    ]
    return running("service", command, env)


def baseline(factory: str, argument: str = "") -> contextlib.AbstractContextManager[ServerProcess]:
    """A bare aiohttp app, `MODULE:FUNCTION(argument)`, served like the service (a context)."""
    command = [sys.executable, "-m", "bench.servers", factory]
    return running(f"baseline {factory}", [*command, argument] if argument else command, None)


class ClientProcess:
    """A function run in a fresh interpreter (spawned, not forked), with its answer or error.

    `target(*args)` runs in the child; what it returns comes back through `result()`.
    With `signals_ready`, the target also gets an Event as its last argument, to set
    when it is ready for the measured part (`wait_ready()` waits for it). The child is
    killed if it is still alive when the context ends.
    """

    def __init__(self, target: Callable[..., Any], *args: Any, signals_ready: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self._answers = context.Queue()
        self._ready = context.Event()
        if signals_ready:
            args = (*args, self._ready)
        self._process = context.Process(
            target=_child_main, args=(self._answers, target, args), daemon=True
        )

    def __enter__(self) -> ClientProcess:
        self._process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(KILL_REAP_SECONDS)
        self._answers.close()

    def wait_ready(self, timeout: float) -> None:
        """Return once the target has set its ready Event; RuntimeError if it fails first."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(CLIENT_POLL_SECONDS):
            if not self._process.is_alive() or time.monotonic() > deadline:
                self.result(0)  # raises with the child's traceback if it sent one
                raise RuntimeError(f"the client was not ready within {timeout:g} s")

    def result(self, timeout: float) -> Any:
        """The target's return value; RuntimeError with its traceback if it raised."""
        try:
            ok, value = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the client gave no answer within {timeout:g} s") from None
        if not ok:
            raise RuntimeError(f"the client failed:\n{value}")
        return value


def _child_main(answers: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        answers.put((True, target(*args)))
    except BaseException:
        answers.put((False, traceback.format_exc()))


def raise_open_files_limit(connections: int) -> None:
    """Raise this process's soft limit on open files to hold `connections` sockets.

    At most to the hard limit. Servers started afterwards inherit the limit, so calling
    this before starting them covers them too.
    """
    wanted = connections + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


UPLOAD_BOUNDARY = "bench-upload-boundary"
UPLOAD_CONTENT_TYPE = f"multipart/form-data; boundary={UPLOAD_BOUNDARY}"


def multipart_body(video: Path, fields: dict[str, str] | None = None) -> bytes:
    """An upload's multipart body (text `fields`, then `video` as `file`), sent with
    UPLOAD_CONTENT_TYPE.

    Built by hand with the standard library: the benchmarks that upload run their clients
    in plain threads or other processes.
    """
    parts = [
        f'--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        f"{value}\r\n".encode()
        for name, value in (fields or {}).items()
    ]
    parts += [
        f'--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{video.name}"\r\nContent-Type: video/mp4\r\n\r\n'.encode(),
        video.read_bytes(),
        f"\r\n--{UPLOAD_BOUNDARY}--\r\n".encode(),
    ]
    return b"".join(parts)


def upload(url: str, video: Path, fields: dict[str, str] | None = None, timeout: float = 60) -> str:
    """POST `video` (and text `fields`) to a service's upload route; the new session's id."""
    request = urllib.request.Request(
        f"{url}/api/v1/video/upload",
        data=multipart_body(video, fields),
        headers={"Content-Type": UPLOAD_CONTENT_TYPE},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)["sessionId"]


def wait_until_running(service: ServerProcess, ids: Sequence[str], timeout: float) -> None:
    """Poll until every session is `processing` with progress > 0; RuntimeError on timeout.

    Progress above 0 means the job's worker has its model loaded and is analysing.
    """
    deadline = time.monotonic() + timeout
    waiting = list(ids)
    while True:
        for session_id in list(waiting):
            url = f"{service.url}/api/v1/video/status/{session_id}"
            with urllib.request.urlopen(url) as answer:
                body = json.load(answer)
            if body["status"] == "processing" and body["progress"] > 0:
                waiting.remove(session_id)
            elif body["status"] not in ("pending", "processing"):
                raise RuntimeError(f"a job ended before it was measured: {body}")
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} jobs were not running after {timeout:g} s")
        time.sleep(RUNNING_POLL_SECONDS)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "healthy"})


def main(argv: list[str] | None = None) -> None:
    """Serve a baseline app on loopback, without access logs (a bare app has none)."""
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument("factory", help="MODULE:FUNCTION returning a web.Application")
    parser.add_argument("argument", nargs="?", default="", help="passed to the factory")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    module_name, _, function_name = args.factory.partition(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    app = factory(args.argument) if args.argument else factory()
    app.router.add_get("/health", _health)
    web.run_app(app, host=HOST, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
