"""Warm workers: started ahead with the model loaded, one job each, replaced behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from protocol import AnalysisType, JobSpec, decode_event, encode_job
from server.jobs.job_queue import MemoryJobQueue
from server.jobs.runner import JobRunner
from server.state.events import EventHub
from server.state.models import SessionStatus
from server.state.sessions import Sessions
from server.state.store import MemoryStore
from server.storage.local import LocalFiles
from tests.server.conftest import (
    FIXTURES,
    WAIT,
    eventually,
    local_job_files,
    new_session,
    process_alive,
)

REAL_WORKER = (sys.executable, "-m", "inference_worker")


@pytest.fixture
async def make_warm_runner(data_paths):
    made = []

    async def make(command, model: str, warm_workers: int = 1):
        queue, hub = MemoryJobQueue(10), EventHub()
        sessions = Sessions(MemoryStore(), hub, LocalFiles(data_paths), queue.position)
        runner = JobRunner(
            sessions,
            queue,
            files=local_job_files(data_paths),
            model=model,
            worker_command=command,
            warm_workers=warm_workers,
        )
        await runner.start()
        made.append((runner, hub))
        return runner, sessions

    yield make
    for runner, hub in made:
        await runner.close()
        await hub.close()


async def submit(runner, sessions, paths, video, analysis=AnalysisType.WORKOUT, **params):
    session = new_session(paths)
    session = session.replace(upload_path=str(video))
    await sessions.create(session)
    await runner.submit(session.id, analysis, {"segment_seconds": 6, **params})
    return session.id


@pytest.mark.slow
async def test_a_job_takes_the_warm_worker_and_a_fresh_one_starts_behind_it(
    make_warm_runner, data_paths, sample_video, tiny_model_dir
):
    runner, sessions = await make_warm_runner(REAL_WORKER, str(tiny_model_dir))
    assert await eventually(lambda: runner._warm.idle_count == 1)
    warm_pid = runner._warm._idle[0].pid

    session_id = await submit(runner, sessions, data_paths, sample_video)
    # The dispatcher takes the queued job a moment after the submit.
    assert await eventually(lambda: session_id in runner._jobs)
    assert runner._jobs[session_id].worker.pid == warm_pid
    finished = await asyncio.wait_for(runner.wait(session_id), WAIT)

    assert finished.status is SessionStatus.COMPLETED, finished.error
    assert await eventually(lambda: runner._warm.idle_count == 1)
    assert runner._warm._idle[0].pid != warm_pid  # one job per process: a new one waits
    assert await eventually(lambda: not process_alive(warm_pid))


@pytest.mark.slow
async def test_a_warm_worker_killed_while_idle_never_breaks_a_job(
    make_warm_runner, data_paths, sample_video, tiny_model_dir
):
    runner, sessions = await make_warm_runner(REAL_WORKER, str(tiny_model_dir))
    assert await eventually(lambda: runner._warm.idle_count == 1)
    os.kill(runner._warm._idle[0].pid, signal.SIGKILL)

    session_id = await submit(runner, sessions, data_paths, sample_video)
    finished = await asyncio.wait_for(runner.wait(session_id), WAIT)

    assert finished.status is SessionStatus.COMPLETED, finished.error


async def test_a_warm_worker_dying_as_the_job_reaches_it_gives_the_job_a_fresh_process(
    make_warm_runner, data_paths, sample_video
):
    command = (sys.executable, str(FIXTURES / "dies_when_warm.py"))
    runner, sessions = await make_warm_runner(command, "any-model")
    assert await eventually(lambda: runner._warm.idle_count == 1)

    session_id = await submit(runner, sessions, data_paths, sample_video)
    finished = await asyncio.wait_for(runner.wait(session_id), WAIT)

    assert finished.status is SessionStatus.COMPLETED
    assert finished.results.model == "cold"


async def test_closing_the_runner_ends_idle_warm_workers(make_warm_runner, data_paths):
    command = (sys.executable, str(FIXTURES / "dies_when_warm.py"))
    runner, _ = await make_warm_runner(command, "any-model", warm_workers=2)
    assert await eventually(lambda: runner._warm.idle_count == 2)
    pids = [worker.pid for worker in runner._warm._idle]
    await runner.close()
    assert not any(process_alive(pid) for pid in pids)


def run_preloaded(preload: str, spec: JobSpec) -> list:
    """A worker started warm with `preload`, then given `spec`, as the server does."""
    import subprocess

    proc = subprocess.Popen(
        [*REAL_WORKER, "--model", preload],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    proc.stdin.write(encode_job(spec))
    proc.stdin.flush()
    lines = proc.stdout.read().splitlines()
    proc.wait(timeout=WAIT)
    proc.stdin.close()
    proc.stdout.close()
    return [decode_event(line) for line in lines]


def spec_for(video, output_dir, model) -> JobSpec:
    return JobSpec(
        session_id="s",
        analysis_type=AnalysisType.HIGHLIGHTS,
        video_path=str(video),
        output_dir=str(output_dir),
        model=str(model),
        params={"segment_seconds": 6},
    )


@pytest.mark.slow
def test_a_job_for_another_model_than_the_preloaded_one_loads_its_own(
    tmp_path, sample_video, tiny_model_dir, steered_model_dir
):
    events = run_preloaded(str(tiny_model_dir), spec_for(sample_video, tmp_path, steered_model_dir))
    assert events[-1].type == "result"
    assert events[-1].results["model"] == steered_model_dir.name
    assert events[-1].results["highlights_found"] == 1  # the steered model's verdicts


@pytest.mark.slow
def test_a_failed_preload_is_retried_for_the_job(tmp_path, sample_video, tiny_model_dir):
    events = run_preloaded(
        str(tmp_path / "missing"), spec_for(sample_video, tmp_path, tiny_model_dir)
    )
    assert events[-1].type == "result"
