"""Resumable (tus) upload throughput against the multipart upload of the same file.

What is measured. A 1 GiB video (quick: 100 MiB) is uploaded to one `python -m server`
both ways, rounds alternating which goes first: as one multipart POST to
`/api/v1/video/upload` (bench_upload's client), and through tus as a POST creating the
upload followed by PATCHes of 50 MiB (the page's and the client's chunk size) on one
keep-alive connection, as tus-js-client sends them. Each figure is the file's size over
the time from connecting to the answer naming the session: the 202 of the multipart POST,
the 204 with `Session-Id` of the last PATCH. Both answers follow the same work after the
last byte (the probe, storing the session), so the ratio is the cost of tus itself: the
extra round trips, a record's update per chunk and the appending to the upload's file.

Why a whole upload and not the bytes alone: the last PATCH is what probes, and stopping
the clock before it would leave out a chunk's writing on one side only. So the file is a
real video that the probe accepts, bench_upload's padded MP4 (a two-second clip, then a
`free` box up to the size: zeros, a sparse hole on the client's side). No analysis runs
(the two-step flow); each session is deleted before the next round.

The client is this process; it sends with `socket.sendfile`, so its own cost is small and
what is timed is the server's. Rows: files under DATA_DIR; then, when SeaweedFS's `weed`
is installed (the dev extra), the same against a node whose files live in an S3 bucket
(`STORAGE_URL`), where an upload's chunks become the parts of a multipart upload.
Goal: tus / multipart >= 0.85x on each.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench import servers
from bench.bench_upload import (
    ANSWER_TIMEOUT_SECONDS,
    CLEANUP_PATH,
    padded_video,
)
from bench.bench_upload import upload as multipart_upload
from bench.common import row
from bench.servers import HOST

MIB = 1024 * 1024
SIZE, QUICK_SIZE = 1024 * MIB, 100 * MIB
ROUNDS, QUICK_ROUNDS = 3, 2
CHUNK_BYTES = 50 * MIB
UPLOADS_PATH = "/api/v1/video/uploads/"
HEAD_READ_BYTES = 65536
GOAL = ">= 0.85x"


def run(quick: bool = False) -> list[dict]:
    """Both uploads, round after round, on local files and (if it can) on a bucket."""
    size = QUICK_SIZE if quick else SIZE
    rounds = QUICK_ROUNDS if quick else ROUNDS
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tus-") as tmp:
        tmp_path = Path(tmp)
        video = padded_video(tmp_path / "upload.mp4", size)
        for where, env in _storages(tmp_path):
            with servers.service(tmp_path / f"data-{where}", env=env) as service:
                seconds = measure(service, video, rounds)
            rows.append(
                row(
                    "tus upload",
                    f"MiB/s, {size / MIB:,.0f} MiB video, files {where}, best of {rounds}, "
                    f"connect to the answer naming the session ({CHUNK_BYTES // MIB} MiB "
                    "PATCHes on one connection)",
                    size / MIB / min(seconds["tus"]),
                    "multipart POST of the same file, same server",
                    size / MIB / min(seconds["multipart"]),
                    GOAL,
                    unit="MiB/s",
                )
            )
    return rows


def _storages(tmp_path: Path) -> Iterator[tuple[str, dict[str, str] | None]]:
    """Where the service keeps files: DATA_DIR, then a SeaweedFS bucket if `weed` is here."""
    yield "under DATA_DIR", None
    try:
        from tests.server.s3_server import running_s3_server, weed_binary

        weed_binary()
    except Exception:  # no dev extra (or no weed binary): the local row stands alone
        return
    with running_s3_server(tmp_path / "s3") as s3:
        env = {**os.environ, **s3.env(), "STORAGE_URL": f"s3://{s3.bucket}"}
        yield "in an S3 bucket (SeaweedFS)", env


def measure(service: servers.ServerProcess, video: Path, rounds: int) -> dict[str, list[float]]:
    """`rounds` uploads each way, alternating which goes first; seconds to the answer."""
    seconds: dict[str, list[float]] = {"tus": [], "multipart": []}
    for round_index in range(rounds):
        order = ["multipart", "tus"] if round_index % 2 else ["tus", "multipart"]
        for way in order:
            if way == "tus":
                elapsed, session_id = tus_upload(service, video)
            else:
                elapsed, _, _, answer = multipart_upload(service, video)
                session_id = answer["sessionId"]
            seconds[way].append(elapsed)
            _delete_session(service, session_id)
    return seconds


def tus_upload(service: servers.ServerProcess, video: Path) -> tuple[float, str]:
    """Create an upload and PATCH `video` in CHUNK_BYTES on one connection; the seconds
    from connecting to the last answer, and the session it names."""
    size = video.stat().st_size
    metadata = "filename " + _b64("upload.mp4")
    host = f"{HOST}:{service.port}"
    started = time.perf_counter()
    with socket.create_connection((HOST, service.port)) as sock, open(video, "rb") as source:
        sock.settimeout(ANSWER_TIMEOUT_SECONDS)
        answers = _Answers(sock)
        sock.sendall(
            (
                f"POST {UPLOADS_PATH} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
                f"Upload-Length: {size}\r\nUpload-Metadata: {metadata}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        status, headers, body = answers.next()
        if status != 201:
            raise RuntimeError(f"tus creation refused: {status} {body[:500]!r}")
        location = headers["location"]
        offset = 0
        while offset < size:
            count = min(CHUNK_BYTES, size - offset)
            sock.sendall(
                (
                    f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nTus-Resumable: 1.0.0\r\n"
                    "Content-Type: application/offset+octet-stream\r\n"
                    f"Upload-Offset: {offset}\r\nContent-Length: {count}\r\n\r\n"
                ).encode()
            )
            sock.sendfile(source, offset, count)
            status, headers, body = answers.next()
            if status != 204:
                raise RuntimeError(f"PATCH at {offset} refused: {status} {body[:500]!r}")
            offset = int(headers["upload-offset"])
        elapsed = time.perf_counter() - started
    return elapsed, headers["session-id"]


class _Answers:
    """HTTP/1.1 responses read one after another from a keep-alive socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def next(self) -> tuple[int, dict[str, str], bytes]:
        """The next response's status, headers (lower-case names) and body."""
        while b"\r\n\r\n" not in self._buffer:
            self._receive()
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._receive()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(status_line.split()[1]), headers, body

    def _receive(self) -> None:
        data = self._sock.recv(HEAD_READ_BYTES)
        if not data:
            raise RuntimeError("the server closed the connection mid-answer")
        self._buffer += data


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _delete_session(service: servers.ServerProcess, session_id: str) -> None:
    """Remove the session and its file, so every round starts from the same disk."""
    request = urllib.request.Request(
        f"{service.url}{CLEANUP_PATH.format(session_id)}", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_SECONDS) as answer:
        json.loads(answer.read())


if __name__ == "__main__":
    for result in run():
        print(result)
