"""A real `redis-server` on a free loopback port, in a folder of its own, for tests.

Started with what a node requires (append-only persistence, `noeviction`); `kill()` is a
kill -9 and `start()` again serves the same data, for crash tests.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.server.server_process import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# A bound against hangs only: redis-server starts in milliseconds.
START_BOUND = 20.0


class RedisServer:
    """One redis-server process over `folder`; `url` stays the same across restarts."""

    def __init__(self, folder: Path, *, durable: bool = True) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.durable else []
        policy = "noeviction" if self.durable else "allkeys-lru"
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.folder),
                "--save", "",
                "--maxmemory-policy", policy,
                *settings,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + START_BOUND
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
            except redis.BusyLoadingError:
                time.sleep(0.02)  # replaying its append-only file
        client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def kill(self) -> None:
        """kill -9: what Redis had not written to its append-only file is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
