"""Small-upload latency: a ~38 KB video's 202, idle and while two jobs run, vs a bare handler.

What is measured. A short video of about 38 KB is POSTed to the service's
`/api/v1/video/upload` (two-step flow: the upload itself starts no job) over a kept-alive
connection, and each figure is the time from sending the request to having the whole
answer: streaming to disk, the probe in a long-lived probe process, the session stored.
The same body goes, in the same rounds, to the bare aiohttp app of `bench_upload` (stream
the part to disk, answer). First with nothing else running, then while two jobs run (the
real worker with the tiny model on an hour-long video, `--max-concurrent-jobs 2`), so the
jobs take both of this machine's cores as they would in service.

A third baseline is what every upload used to pay: probing the same file in a fresh
`python -m inference_worker --probe` process, timed by itself (idle only).

Reading the table: the goal is absolute (a 202 within tens of milliseconds, even while
jobs run); the ratio to the bare handler says what the service adds per small upload.
"""

from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import servers
from bench.bench_upload import UPLOAD_PATH
from bench.common import p99, row
from bench.servers import HOST, REPO
from inference_worker.tiny_model import build_tiny_model
from tests.media import write_video

UPLOADS, QUICK_UPLOADS = 60, 15
FRESH_PROBES, QUICK_FRESH_PROBES = 10, 3
# Long enough that both jobs are still analysing when every upload has been timed.
JOB_VIDEO_SECONDS = 3600.0
JOB_VIDEO_FPS = 2
# Two workers importing mlx on two cores take a few seconds to be under way.
RUNNING_TIMEOUT_SECONDS = 120.0
ANSWER_TIMEOUT_SECONDS = 30.0


def run(quick: bool = False) -> list[dict]:
    """Time small uploads to both servers, idle and then with two jobs running."""
    uploads = QUICK_UPLOADS if quick else UPLOADS
    with tempfile.TemporaryDirectory(prefix="bench-upload-latency-") as tmp:
        tmp_path = Path(tmp)
        small = write_video(tmp_path / "small.mp4", seconds=6.0, width=320, height=240, grain=4)
        body = servers.multipart_body(small)
        kb = small.stat().st_size / 1000
        received = tmp_path / "bare"
        received.mkdir()
        model = build_tiny_model(tmp_path / "model")
        job_video = write_video(tmp_path / "hour.mp4", seconds=JOB_VIDEO_SECONDS, fps=JOB_VIDEO_FPS)
        fresh = [fresh_probe(small) for _ in range(QUICK_FRESH_PROBES if quick else FRESH_PROBES)]
        with (
            servers.service(tmp_path / "data", "--model", str(model)) as service,
            servers.baseline("bench.bench_upload:baseline_app", str(received)) as bare,
        ):
            idle = rounds(service, bare, body, uploads)
            jobs = [
                servers.upload(service.url, job_video, {"analysis_type": "highlights"})
                for _ in range(2)
            ]
            servers.wait_until_running(service, jobs, RUNNING_TIMEOUT_SECONDS)
            busy = rounds(service, bare, body, uploads)
            # Still both analysing: otherwise the figures would not be "while two jobs run".
            servers.wait_until_running(service, jobs, RUNNING_TIMEOUT_SECONDS)
    bare_name = "bare aiohttp multipart to disk"
    rows = []
    for when, times in (("idle", idle), ("two jobs running", busy)):
        what = f"{kb:.0f} KB video, {uploads} uploads, {when}"
        for label, statistic in (("p50", statistics.median), ("p99", p99)):
            rows.append(
                row(
                    "upload 202",
                    f"{label} latency, {what}",
                    statistic(times["service"]),
                    bare_name,
                    statistic(times["bare"]),
                    "tens of ms",
                )
            )
    rows.append(
        row(
            "upload 202",
            f"p50 latency, {kb:.0f} KB video, idle, against a fresh-interpreter probe (before)",
            statistics.median(idle["service"]),
            "`python -m inference_worker --probe` per upload",
            statistics.median(fresh),
            "well under 1x",
        )
    )
    return rows


def rounds(
    service: servers.ServerProcess, bare: servers.ServerProcess, body: bytes, uploads: int
) -> dict[str, list[float]]:
    """`uploads` timed POSTs to each server, alternating, each over its own kept connection."""
    times: dict[str, list[float]] = {"service": [], "bare": []}
    connections = {
        "service": http.client.HTTPConnection(HOST, service.port, timeout=ANSWER_TIMEOUT_SECONDS),
        "bare": http.client.HTTPConnection(HOST, bare.port, timeout=ANSWER_TIMEOUT_SECONDS),
    }
    try:
        for _ in range(uploads):
            for name, connection in connections.items():
                times[name].append(post(connection, body))
    finally:
        for connection in connections.values():
            connection.close()
    return times


def post(connection: http.client.HTTPConnection, body: bytes) -> float:
    """Seconds from sending the upload to having its whole answer (a 200 or 202)."""
    headers = {"Content-Type": servers.UPLOAD_CONTENT_TYPE}
    started = time.perf_counter()
    connection.request("POST", UPLOAD_PATH, body=body, headers=headers)
    response = connection.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - started
    if response.status not in (200, 202):
        raise RuntimeError(f"upload refused ({response.status}): {answer[:300]!r}")
    return elapsed


def fresh_probe(video: Path) -> float:
    """Seconds for one probe in a new interpreter, as every upload paid before."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "inference_worker", "--probe", str(video)],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=ANSWER_TIMEOUT_SECONDS,
    )
    return time.perf_counter() - started


if __name__ == "__main__":
    for result in run():
        print(result)
