"""Run the real `python -m inference_worker` as the server would, and collect what it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from protocol import InvalidLine, JobSpec, decode_event, encode_job, is_terminal

REPO = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "inference_worker"]
# Generous bound so a hung worker fails the test instead of hanging the suite.
RUN_TIMEOUT = 120


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@dataclass
class WorkerRun:
    returncode: int
    lines: list[str]
    stderr: str
    events: list = field(default_factory=list)

    @property
    def terminal(self):
        return self.events[-1]

    def of_type(self, kind: str) -> list:
        return [event for event in self.events if event.type == kind]


def collect(returncode: int, stdout: str, stderr: str) -> WorkerRun:
    lines = stdout.splitlines()
    return WorkerRun(returncode, lines, stderr, [decode_event(line) for line in lines])


def run_spec(spec: JobSpec) -> WorkerRun:
    """The server's way in: the JobSpec on stdin, stdin left open until the worker is done."""
    # stdin stays open (its end means "the server is gone"), so communicate() can't be used;
    # stderr goes to a file so a chatty worker can't block on a full pipe.
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            WORKER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=worker_env(),
        )
        killer = threading.Timer(RUN_TIMEOUT, proc.kill)
        killer.start()
        try:
            proc.stdin.write(encode_job(spec))
            proc.stdin.flush()
            stdout = proc.stdout.read()
            proc.wait()
        finally:
            killer.cancel()
            proc.stdin.close()
            proc.stdout.close()
        stderr.seek(0)
        return collect(proc.returncode, stdout, stderr.read())


def run_cli(*args: str) -> WorkerRun:
    """The by-hand way in: command-line flags."""
    done = subprocess.run(
        [*WORKER, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env(),
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    return collect(done.returncode, done.stdout, done.stderr)


def assert_clean_channel(run: WorkerRun) -> None:
    """Every stdout line is a valid event, and exactly the last one is terminal."""
    invalid = [event for event in run.events if isinstance(event, InvalidLine)]
    assert not invalid, f"not events: {invalid}\nstderr: {run.stderr[-2000:]}"
    assert all(json.loads(line) for line in run.lines)
    terminals = [event for event in run.events if is_terminal(event)]
    assert len(terminals) == 1 and run.events[-1] is terminals[0], run.stderr[-2000:]
    assert "Traceback" not in "\n".join(run.lines)


def assert_progress_monotonic(run: WorkerRun) -> None:
    values = [event.progress for event in run.of_type("progress")]
    assert values, "no progress events"
    assert values == sorted(values), values
    assert all(0.0 <= value <= 1.0 for value in values)
    assert all(event.step.strip() for event in run.of_type("progress"))
