"""Upload throughput and memory: 200 MiB and 1 GiB multipart uploads, against a bare handler.

What is measured. A video of 200 MiB and one of 1 GiB (quick: 100 MiB) are POSTed to the service's
`/api/v1/video/upload` (two-step flow: no analysis runs) and, in the same rounds, to a
bare aiohttp app whose only handler streams the multipart file part to disk with the
same `read_chunk` size as the service. Throughput is the file's size over the time from
connecting to having the whole answer, so the service's figure includes what it does
after the last byte: probing the file in a long-lived probe process and storing the
session. A second row stops the clock when the last byte is sent, which leaves the probe
out (and a socket buffer's worth of reading, a few milliseconds, in). As a reference with
no HTTP at all, the same bytes are also copied from file to file through user space in
the same chunk size, as `cp` does without kernel offload.

The file is a real two-second MP4 followed by a `free` box that pads it to its size:
MP4 readers skip `free` boxes, so the service's probe accepts it, and it costs nothing to
make (the padding is a sparse hole in the client's copy; the servers write real bytes).
The client is this benchmark process: it sends the request with `socket.sendfile`, so
sending costs it almost no CPU, leaving the servers' own work as what is timed.

Memory: before each upload the server's peak-RSS counter (VmHWM) is reset to its current
RSS through /proc/PID/clear_refs; the peak after the upload minus the RSS before it is
the growth the upload caused (goal < 64 MiB, as the file is streamed, never held). Where
the kernel refuses the reset, the peak since the server started stands in for it, and the
figure says it is an upper bound.

Reading the table: the throughput ratio is service / bare (goal >= 0.9x); the copy row
shows how far any aiohttp upload is from the disk. Rounds alternate the servers and each
figure is the best round. A neighbour's burst of load during one side's uploads still
moves these ratios from run to run; the row of MiB per CPU-second of the server process
(the kernel's copying included, the probe process not) is blind to that, and steadier.
The rows after the first ones are for the largest file only.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import struct
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from aiohttp import BodyPartReader, web

from bench import servers
from bench.common import row
from bench.servers import HOST
from server.web.multipart import CHUNK_BYTES
from tests.media import write_video

MIB = 1024 * 1024
SIZES, QUICK_SIZES = (200 * MIB, 1024 * MIB), (100 * MIB,)
ROUNDS, QUICK_ROUNDS = 5, 3
UPLOAD_PATH = "/api/v1/video/upload"
CLEANUP_PATH = "/api/v1/video/cleanup/{}"
# The answer follows the last byte within a probe's time; this only bounds a stuck server.
ANSWER_TIMEOUT_SECONDS = 120.0
ANSWER_READ_BYTES = 65536


def run(quick: bool = False) -> list[dict]:
    """Upload to both servers and copy the file, round after round; see the module docstring."""
    sizes = QUICK_SIZES if quick else SIZES
    rounds = QUICK_ROUNDS if quick else ROUNDS
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        tmp_path = Path(tmp)
        received = tmp_path / "bare"
        received.mkdir()
        with (
            servers.service(tmp_path / "data") as service,
            servers.baseline("bench.bench_upload:baseline_app", str(received)) as bare,
        ):
            exact = servers.reset_peak_memory(service.pid)
            measured = []
            for size in sizes:
                video = padded_video(tmp_path / "upload.mp4", size)
                measured.append(measure(service, bare, video, received, rounds))
                video.unlink()
    rows = [
        row(
            "upload",
            f"MiB/s, {size / MIB:,.0f} MiB video, best of {rounds}, connect to answer "
            "(includes the probe)",
            size / MIB / min(seconds["service"]),
            "bare aiohttp multipart to disk",
            size / MIB / min(seconds["bare"]),
            ">= 0.9x",
            unit="MiB/s",
        )
        for size, (seconds, _, _, _) in zip(sizes, measured, strict=True)
    ]
    seconds, sending, cpu, growth = measured[-1]
    mib = sizes[-1] / MIB
    what = f"{mib:,.0f} MiB video, best of {rounds}"
    return rows + [
        row(
            "upload",
            f"MiB/s, {what}, connect to last byte sent (the streaming alone)",
            mib / min(sending["service"]),
            "bare aiohttp multipart to disk",
            mib / min(sending["bare"]),
            "",
            unit="MiB/s",
        ),
        row(
            "upload",
            f"MiB per CPU-second of the server process, {mib:,.0f} MiB video, "
            f"median of {rounds} (its probe process not included)",
            mib / statistics.median(cpu["service"]),
            "bare aiohttp multipart to disk",
            mib / statistics.median(cpu["bare"]),
            "",
            unit="MiB/CPU-s",
        ),
        row(
            "upload",
            f"MiB/s, {what}, against a plain copy (reference)",
            mib / min(seconds["service"]),
            f"file to file in {CHUNK_BYTES // MIB} MiB chunks",
            mib / min(seconds["copy"]),
            "",
            unit="MiB/s",
        ),
        row(
            "upload",
            f"peak RSS growth of the server during the upload, {mib:,.0f} MiB, worst of {rounds}"
            + ("" if exact else " (upper bound: VmHWM could not be reset)"),
            max(growth["service"]) / MIB,
            "bare aiohttp multipart to disk",
            max(growth["bare"]) / MIB,
            "< 64 MiB",
            unit="MiB",
        ),
    ]


def measure(
    service: servers.ServerProcess,
    bare: servers.ServerProcess,
    video: Path,
    received: Path,
    rounds: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]], dict]:
    """`rounds` uploads of `video` to each server (alternating who goes first) and copies.

    Returns, per side, the seconds to the answer (and of the copies), the seconds to the
    last byte sent, the server's CPU seconds and its peak RSS growth in bytes.
    """
    seconds: dict[str, list[float]] = {"service": [], "bare": [], "copy": []}
    sending: dict[str, list[float]] = {"service": [], "bare": []}
    cpu: dict[str, list[float]] = {"service": [], "bare": []}
    growth: dict[str, list[int]] = {"service": [], "bare": []}
    for round_index in range(rounds):
        pair = [("bare", bare), ("service", service)]
        if round_index % 2:
            pair.reverse()  # neither side always goes first
        for name, server in pair:
            cpu_before = servers.cpu_seconds(server.pid)
            elapsed, sent, grew, answer = upload(server, video)
            cpu[name].append(servers.cpu_seconds(server.pid) - cpu_before)
            seconds[name].append(elapsed)
            sending[name].append(sent)
            growth[name].append(grew)
            if name == "service":
                _delete_session(service, answer["sessionId"])
            else:
                _empty(received)
        seconds["copy"].append(copy_bytes(video, video.with_name("copy.mp4")))
    return seconds, sending, cpu, growth


def padded_video(path: Path, size: int) -> Path:
    """A valid MP4 of exactly `size` bytes: a short clip, then a `free` box up to the size.

    The clip's `moov` box comes first (faststart), so a reader has all it needs before
    the padding; the box's 32-bit size field limits this to files under 4 GiB.
    """
    write_video(path, seconds=2.0)
    padding = size - path.stat().st_size
    with open(path, "r+b") as out:
        out.seek(0, 2)
        out.write(struct.pack(">I4s", padding, b"free"))
        out.truncate(size)  # the rest of the box is a hole: zeros, never written
    return path


def upload(server: servers.ServerProcess, video: Path) -> tuple[float, float, int, dict]:
    """POST `video` as multipart field `file`.

    Returns the seconds to the answer, the seconds until the last byte was handed to the
    kernel (the server has read all but a socket buffer's worth by then), the server's RSS
    growth in bytes, and the JSON answer.
    """
    boundary = uuid.uuid4().hex
    preamble = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="upload.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    epilogue = f"\r\n--{boundary}--\r\n".encode()
    length = len(preamble) + video.stat().st_size + len(epilogue)
    head = (
        f"POST {UPLOAD_PATH} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()
    servers.reset_peak_memory(server.pid)  # whether it can was checked once, by the caller
    before = servers.memory(server.pid).rss
    started = time.perf_counter()
    with socket.create_connection((HOST, server.port)) as sock, open(video, "rb") as source:
        sock.settimeout(ANSWER_TIMEOUT_SECONDS)
        sock.sendall(head + preamble)
        sock.sendfile(source)
        sock.sendall(epilogue)
        sent = time.perf_counter() - started
        answer = bytearray()
        while data := sock.recv(ANSWER_READ_BYTES):  # the server closes after its answer
            answer += data
    elapsed = time.perf_counter() - started
    grew = servers.memory(server.pid).peak - before
    status_line, _, rest = bytes(answer).partition(b"\r\n")
    if status_line.split()[1] not in (b"200", b"202"):
        raise RuntimeError(f"{server.name} refused the upload: {bytes(answer[:500])!r}")
    return elapsed, sent, grew, json.loads(rest.partition(b"\r\n\r\n")[2])


def copy_bytes(source: Path, target: Path) -> float:
    """Seconds to copy `source` to `target` through user space in CHUNK_BYTES reads."""
    started = time.perf_counter()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            writer.write(chunk)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def baseline_app(folder: str) -> web.Application:
    """The bare app: stream the first multipart part to a new file in `folder`, answer 200."""
    target = Path(folder)

    async def upload(request: web.Request) -> web.Response:
        reader = await request.multipart()
        part = await reader.next()
        assert isinstance(part, BodyPartReader)
        size = 0
        # Written in the event loop, as aiohttp's documentation streams an upload.
        with open(target / f"{uuid.uuid4().hex}.mp4", "wb") as out:  # noqa: ASYNC230
            while chunk := await part.read_chunk(CHUNK_BYTES):
                out.write(chunk)
                size += len(chunk)
        return web.json_response({"size": size})

    app = web.Application()
    app.router.add_post(UPLOAD_PATH, upload)
    return app


def _delete_session(service: servers.ServerProcess, session_id: str) -> None:
    """Remove the uploaded file through the API, so the next round starts from the same disk."""
    request = urllib.request.Request(
        f"{service.url}{CLEANUP_PATH.format(session_id)}", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_SECONDS) as answer:
        answer.read()


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


if __name__ == "__main__":
    for result in run():
        print(result)
