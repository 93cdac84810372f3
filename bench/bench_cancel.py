"""Cancel latency: `POST /cancel/{id}` of running jobs, against SIGTERM and reap of a bare process.

What is measured. The service runs 20 jobs at once (quick: 6; `--max-concurrent-jobs`
as many), each the real worker with the tiny model on an hour-long low-resolution video,
so every job is still analysing when it is cancelled. Once every session is `processing`
with progress above 0 (its model loaded, segments under way), the jobs are cancelled one
after another; each figure is the time from sending `POST /cancel/{id}` to having the
answer, which the service sends only once that job's worker process is gone. After each
answer the service's child processes are counted, to check that one fewer is alive.

The baseline is what a cancel cannot do without: the same number of bare
`python -c "import time; time.sleep(600)"` processes, each in its own process group, each
ended by SIGTERM to its group and reaped by this process. Each baseline kill is timed
just before the matching cancel, so both happen with the same number of workers still
busy on the machine's two cores: the first with all of them, the last with one.

Reading the table: the goal is absolute (p99 < 1 s); the ratio says what the service and
its worker's shutdown (Python unwinding, files removed, mlx freed) add to a process's
bare exit. With 20 cancels, p99 is close to the slowest one.
"""

from __future__ import annotations

import http.client
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import servers
from bench.common import p99, row
from bench.servers import HOST
from inference_worker.tiny_model import build_tiny_model
from tests.media import write_video

JOBS, QUICK_JOBS = 20, 6
# Long enough that 20 workers sharing two cores are all still analysing when cancelled.
VIDEO_SECONDS = 3600.0
VIDEO_FPS = 2
V1 = "/api/v1/video"
# 20 workers importing mlx on two cores take tens of seconds to all be under way.
RUNNING_TIMEOUT_SECONDS = 300.0
# A cancel answers within the worker's grace period plus a reap; this bounds a stuck one.
CANCEL_TIMEOUT_SECONDS = 30.0
SLEEPER = "import time; time.sleep(600)"
SLEEPER_REAP_SECONDS = 10.0


def run(quick: bool = False) -> list[dict]:
    """Start the jobs, wait until all run, then time baseline kills and cancels in turn."""
    jobs = QUICK_JOBS if quick else JOBS
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp, ExitStack() as stack:
        tmp_path = Path(tmp)
        model = build_tiny_model(tmp_path / "model")
        video = write_video(tmp_path / "hour.mp4", seconds=VIDEO_SECONDS, fps=VIDEO_FPS)
        service = stack.enter_context(
            servers.service(
                tmp_path / "data",
                "--model",
                str(model),
                "--max-concurrent-jobs",
                str(jobs),
                "--max-queued-jobs",
                str(jobs),
            )
        )
        sleepers = [_sleeper(stack) for _ in range(jobs)]
        ids = [
            servers.upload(
                service.url, video, {"analysis_type": "highlights"}, CANCEL_TIMEOUT_SECONDS
            )
            for _ in range(jobs)
        ]
        servers.wait_until_running(service, ids, RUNNING_TIMEOUT_SECONDS)
        cancel_times, kill_times, alive = [], [], 0
        connection = http.client.HTTPConnection(HOST, service.port, timeout=CANCEL_TIMEOUT_SECONDS)
        stack.callback(connection.close)
        for session_id, sleeper in zip(ids, sleepers, strict=True):
            kill_times.append(_kill(sleeper))
            before = servers.child_pids(service.pid)
            cancel_times.append(_cancel(connection, session_id))
            if len(servers.child_pids(service.pid)) >= len(before):
                alive += 1
    what = f"{jobs} running jobs (tiny model), cancelled one by one"
    checked = f"workers alive after their answer: {alive}"
    baseline = "SIGTERM + reap of a bare sleeping python"
    return [
        row(
            "cancel",
            f"p50 latency, {what}",
            statistics.median(cancel_times),
            baseline,
            statistics.median(kill_times),
            "",
        ),
        row(
            "cancel",
            f"p99 latency, {what} ({checked})",
            p99(cancel_times),
            baseline,
            p99(kill_times),
            "< 1 s",
        ),
    ]


def _sleeper(stack: ExitStack) -> subprocess.Popen:
    """A bare python process asleep in its own group, killed on the way out if still there."""
    process = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)

    def end() -> None:
        if process.poll() is None:
            process.kill()
            process.wait(SLEEPER_REAP_SECONDS)

    stack.callback(end)
    return process


def _kill(process: subprocess.Popen) -> float:
    """Seconds from SIGTERM to the process's group until the process is reaped."""
    started = time.perf_counter()
    servers.signal_group(process.pid, signal.SIGTERM)
    process.wait(SLEEPER_REAP_SECONDS)
    return time.perf_counter() - started


def _cancel(connection: http.client.HTTPConnection, session_id: str) -> float:
    """Seconds from sending the cancel to having its answer (a 200 saying `cancelled`)."""
    started = time.perf_counter()
    connection.request("POST", f"{V1}/cancel/{session_id}")
    answer = connection.getresponse()
    body = answer.read()
    elapsed = time.perf_counter() - started
    if answer.status != 200 or json.loads(body)["status"] != "cancelled":
        raise RuntimeError(f"cancel answered {answer.status}: {body[:300]!r}")
    return elapsed


if __name__ == "__main__":
    for result in run():
        print(result)
