"""A real `python -m server` on a loopback port, for tests that need the whole process:
kill -9 and restart, outside kills of its workers, its memory over a soak."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]
# Bounds against hangs only.
START_BOUND = 60.0
STOP_BOUND = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> set[int]:
    """Processes whose parent is `pid` (zombies included), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return found


def command_line(pid: int) -> list[str]:
    """The arguments `pid` was started with; empty once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class ServerProcess:
    """A real `python -m server` on a loopback port.

    `settings` become flags (`max_concurrent_jobs=2` -> `--max-concurrent-jobs 2`); with
    `log_path` the server's log (stderr) is kept there instead of thrown away.
    """

    def __init__(
        self, data_dir: Path, model_dir: Path, *, log_path: Path | None = None, **settings: Any
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        flags = {"warm_workers": 0, **settings}
        args = [arg for name, value in flags.items() for arg in (_flag(name), str(value))]
        self._log: IO[bytes] | None = open(log_path, "ab") if log_path else None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                "--model",
                str(model_dir),
                *args,
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=self._log or subprocess.DEVNULL,
        )

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = asyncio.get_running_loop().time() + START_BOUND
        while True:
            try:
                async with http.get(f"{self.url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "server did not start"
            assert self.proc.poll() is None, "server exited"
            await asyncio.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=STOP_BOUND)
        if self._log is not None:
            self._log.close()
            self._log = None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
