"""JobRunner against tiny real child processes (tests/fixtures/fake_worker.py).

Each test names the rule it checks. Waits are bounded only to turn a hang into a failure.
"""

import asyncio
import contextlib
import json
import logging

import pytest

from protocol import AnalysisType
from server.jobs import runner as runner_module
from server.jobs.job_queue import MemoryJobQueue
from server.jobs.runner import JobRunner
from server.jobs.worker_process import WorkerProcess
from server.state.events import EventHub
from server.state.models import (
    QueueFull,
    RunnerClosed,
    SessionConflict,
    SessionNotFound,
    SessionStatus,
)
from server.state.sessions import Sessions
from server.state.store import MemoryStore
from server.storage.local import LocalFiles
from tests.server.conftest import (
    FAKE_WORKER,
    WAIT,
    eventually,
    local_job_files,
    new_session,
    process_alive,
)


async def replay(harness, session_id) -> list:
    """Every kept event of a finished session, from the first."""

    async def collect():
        return [event async for event in harness.hub.subscribe(session_id, last_event_id=0)]

    return await asyncio.wait_for(collect(), WAIT)


def transitions(caplog, session_id) -> list[str]:
    """The runner's own log lines about one session (worker log lines excluded)."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "server.jobs.runner" and session_id in record.getMessage()
    ]


# ---- a job's life -----------------------------------------------------------------------


async def test_a_job_runs_to_completion_with_the_job_spec_it_was_given(make_runner):
    harness = await make_runner()
    submitted = await harness.submit("succeed")
    assert submitted.status is SessionStatus.PENDING
    done = await harness.finished(submitted.id)
    assert done.status is SessionStatus.COMPLETED
    assert done.progress == 1.0
    assert done.current_step == "Completed"
    assert done.attempts == 1
    assert json.loads(done.results.video_description) == {
        "session_id": submitted.id,
        "model": "test-model",
        "params": {"mode": "succeed"},
        "filename": "clip.mp4",
        "video_info": submitted.video.to_dict(),  # the upload's probe result: no second probe
        "analysis_type": "highlights",
        "video_path_exists": True,
    }


async def test_a_jobs_events_are_ordered_and_end_with_exactly_one_terminal_event(make_runner):
    harness = await make_runner()
    session = await harness.submit("succeed")
    await harness.finished(session.id)
    events = await replay(harness, session.id)
    ids = [event.id for event in events]
    assert ids == sorted(set(ids))
    assert [event.name for event in events].count("completed") == 1
    assert events[-1].name == "completed"
    partials = [event.data for event in events if event.name == "partial"]
    assert [(data["kind"], data["item"]["start"], data["item"]["end"]) for data in partials] == [
        ("timeline", 0.0, 10.0),
        ("timeline", 10.0, 20.0),
    ]
    assert all(data["sessionId"] == session.id for data in partials)
    statuses = [event.data["status"] for event in events if event.name == "status"]
    assert statuses[:3] == ["uploaded", "pending", "processing"]
    assert statuses[-1] == "completed"
    steps = [event.data["currentStep"] for event in events if event.name == "status"]
    assert "Starting worker" in steps and "Analyzing segment 2/2" in steps


async def test_each_transition_is_logged_once_with_the_session_id(make_runner, caplog):
    caplog.set_level(logging.INFO)
    harness = await make_runner()
    session = await harness.submit("succeed")
    await harness.finished(session.id)
    lines = transitions(caplog, session.id)
    assert [line.split()[2] for line in lines] == ["queued", "started", "completed"]
    assert any(
        r.name == "server.jobs.runner.worker" and "segment 1 done" in r.getMessage()
        for r in caplog.records
    )


async def test_progress_never_goes_down_within_a_run(make_runner):
    harness = await make_runner()
    session = await harness.submit("progress_down")
    await harness.finished(session.id)
    events = await replay(harness, session.id)
    progress = [
        e.data["progress"] for e in events if e.name == "status" and e.data["status"] != "pending"
    ]
    assert progress == sorted(progress)
    assert 0.5 in progress and 0.3 not in progress


async def test_a_result_line_of_several_megabytes_completes_the_job(make_runner):
    harness = await make_runner()
    session = await harness.submit("huge_result")
    done = await harness.finished(session.id)
    assert done.status is SessionStatus.COMPLETED
    assert len(done.results.video_description) == 8_000_000


# ---- concurrency and the queue ----------------------------------------------------------


async def test_never_more_than_max_concurrent_worker_processes_at_once(make_runner, monkeypatch):
    live, most = set(), []

    class CountingWorker(WorkerProcess):
        async def start(self, command, env=None):
            await super().start(command, env)
            live.add(self)
            most.append(len(live))

        async def terminate(self):
            await super().terminate()
            live.discard(self)

    monkeypatch.setattr(runner_module, "WorkerProcess", CountingWorker)
    harness = await make_runner(max_concurrent=2)
    sessions = [await harness.submit("succeed") for _ in range(6)]
    done = await asyncio.gather(*(harness.finished(s.id) for s in sessions))
    assert all(s.status is SessionStatus.COMPLETED for s in done)
    assert len(most) == 6
    assert max(most) == 2


async def test_queued_jobs_have_positions_that_move_up_as_the_queue_shifts(make_runner):
    harness = await make_runner(max_concurrent=1)
    running = await harness.submit("sleep")
    await harness.sleeping(running.id)
    first, second, third = [await harness.submit("sleep") for _ in range(3)]
    assert [await harness.runner.queue_position(s.id) for s in (first, second, third)] == [1, 2, 3]
    assert await harness.runner.queue_depth() == 3 and harness.runner.running_count == 1
    assert (await harness.sessions.body(await harness.sessions.get(third.id)))["queuePosition"] == 3

    await harness.runner.cancel(first.id)
    await harness.until(second.id, lambda body: body["queuePosition"] == 1)
    await harness.until(third.id, lambda body: body["queuePosition"] == 2)

    await harness.runner.cancel(running.id)
    await harness.sleeping(second.id)
    await harness.until(third.id, lambda body: body["queuePosition"] == 1)
    assert harness.runner.running_count == 1


async def test_no_status_is_pending_without_a_queue_position(make_runner):
    """API.md: queuePosition is 1-based while pending; a job about to start is no exception."""
    harness = await make_runner(max_concurrent=1)
    polled: list[dict] = []
    sessions = []

    async def poll() -> None:
        while True:
            for session in sessions:
                polled.append(await harness.sessions.body(await harness.sessions.get(session.id)))
            await asyncio.sleep(0)

    polling = asyncio.ensure_future(poll())
    try:
        for _ in range(4):
            sessions.append(await harness.submit("succeed"))
        for session in sessions:
            await harness.finished(session.id)
    finally:
        polling.cancel()
    published = [
        event.data
        for session in sessions
        for event in await replay(harness, session.id)
        if event.name == "status"
    ]
    pending = [body for body in polled + published if body["status"] == "pending"]
    assert pending, "no pending status was seen at all"
    assert [body for body in pending if body["queuePosition"] is None] == []
    assert {body["queuePosition"] for body in pending} >= {1, 2}


async def test_a_pending_session_that_no_queue_holds_is_queued_again_and_runs(make_runner):
    """What a process killed between storing and queueing would leave: recover() runs it."""
    harness = await make_runner()
    orphan = await harness.sessions.create(
        new_session(
            harness.paths,
            status=SessionStatus.PENDING,
            analysis_type=AnalysisType.HIGHLIGHTS,
            params={"mode": "succeed"},
        )
    )
    assert await harness.runner.queue_position(orphan.id) is None
    assert await harness.runner.recover() == 1
    assert await harness.runner.recover() == 0  # now held: never queued twice
    done = await harness.finished(orphan.id)
    assert done.status is SessionStatus.COMPLETED and done.attempts == 1


async def test_the_periodic_sweep_finds_an_orphan_without_a_restart(make_runner):
    harness = await make_runner(orphan_sweep_seconds=0.1)
    orphan = await harness.sessions.create(
        new_session(
            harness.paths,
            status=SessionStatus.PENDING,
            analysis_type=AnalysisType.HIGHLIGHTS,
            params={"mode": "succeed"},
        )
    )
    assert (await harness.finished(orphan.id)).status is SessionStatus.COMPLETED


async def test_a_full_queue_refuses_with_queue_full_and_leaves_the_session_uploaded(make_runner):
    harness = await make_runner(max_concurrent=1, max_queued=1)
    await harness.submit("sleep")
    assert await harness.runner.has_room()
    await harness.submit("sleep")
    assert not await harness.runner.has_room()
    refused = await harness.upload()
    with pytest.raises(QueueFull) as error:
        await harness.runner.submit(refused.id, AnalysisType.WORKOUT, {})
    assert error.value.retry_after_seconds > 0
    assert (await harness.sessions.get(refused.id)).status is SessionStatus.UPLOADED


async def test_a_session_can_be_submitted_only_once(make_runner):
    harness = await make_runner()
    session = await harness.submit("sleep")
    with pytest.raises(SessionConflict, match=r"^Session already started \(status: "):
        await harness.runner.submit(session.id, AnalysisType.HIGHLIGHTS, {})


async def test_submitting_an_unknown_session_is_session_not_found(make_runner):
    harness = await make_runner()
    with pytest.raises(SessionNotFound):
        await harness.runner.submit("nope", AnalysisType.HIGHLIGHTS, {})


# ---- cancel -----------------------------------------------------------------------------


async def test_cancelling_a_queued_job_takes_it_out_of_the_queue(make_runner):
    harness = await make_runner(max_concurrent=1)
    running = await harness.submit("sleep")
    await harness.sleeping(running.id)
    queued = await harness.submit("succeed")
    cancelled = await harness.runner.cancel(queued.id)
    assert cancelled.status is SessionStatus.CANCELLED
    assert await harness.runner.queue_position(queued.id) is None
    assert await harness.runner.queue_depth() == 0
    await harness.runner.cancel(running.id)
    events = await replay(harness, queued.id)
    assert [e.name for e in events][-2:] == ["status", "cancelled"]
    assert "processing" not in [e.data["status"] for e in events]


async def test_cancel_returns_only_once_the_worker_process_is_gone(make_runner):
    harness = await make_runner()
    session = await harness.submit("sleep")
    pid = await harness.sleeping(session.id)
    cancelled = await harness.runner.cancel(session.id)
    assert cancelled.status is SessionStatus.CANCELLED
    assert not process_alive(pid)
    assert harness.runner.running_count == 0
    assert (await harness.sessions.get(session.id)).status is SessionStatus.CANCELLED


async def test_cancel_kills_the_workers_children_too(make_runner):
    harness = await make_runner()
    session = await harness.submit("grandchild")
    pid = await harness.sleeping(session.id)
    grandchild = harness.pid_file(session.id, "grandchild.pid")
    await harness.runner.cancel(session.id)
    assert not process_alive(pid)
    assert not process_alive(grandchild)


async def test_a_worker_ignoring_sigterm_is_killed_before_cancel_returns(make_runner):
    harness = await make_runner()
    session = await harness.submit("ignore_sigterm")
    pid = await harness.sleeping(session.id)
    await harness.runner.cancel(session.id)
    assert not process_alive(pid)


async def test_cancel_is_idempotent_and_publishes_one_cancelled_event(make_runner, caplog):
    caplog.set_level(logging.INFO)
    harness = await make_runner()
    session = await harness.submit("sleep")
    pid = await harness.sleeping(session.id)
    together = await asyncio.gather(*(harness.runner.cancel(session.id) for _ in range(3)))
    again = await harness.runner.cancel(session.id)
    assert {s.status for s in [*together, again]} == {SessionStatus.CANCELLED}
    assert not process_alive(pid)
    events = await replay(harness, session.id)
    assert [e.name for e in events].count("cancelled") == 1
    assert [line.split()[2] for line in transitions(caplog, session.id)].count("cancelled") == 1


async def test_the_final_status_is_cancelled_even_if_the_worker_answers_with_a_result(
    make_runner,
):
    """The worker prints a result as it is terminated: cancel was recorded first, and stays."""
    harness = await make_runner()
    session = await harness.submit("result_on_term")
    await harness.sleeping(session.id)
    await harness.runner.cancel(session.id)
    final = await harness.sessions.get(session.id)
    assert final.status is SessionStatus.CANCELLED
    assert final.results is None
    names = [e.name for e in await replay(harness, session.id)]
    assert names[-1] == "cancelled"
    assert "completed" not in names and "failed" not in names


async def test_cancelling_an_uploaded_session_just_marks_it_cancelled(make_runner):
    harness = await make_runner()
    session = await harness.upload()
    assert (await harness.runner.cancel(session.id)).status is SessionStatus.CANCELLED
    with pytest.raises(SessionConflict):
        await harness.runner.submit(session.id, AnalysisType.HIGHLIGHTS, {})


async def test_cancelling_a_finished_session_is_a_conflict_naming_its_status(make_runner):
    harness = await make_runner()
    completed = await harness.submit("succeed")
    failed = await harness.submit("crash")
    for session, status in ((completed, "completed"), (failed, "failed")):
        await harness.finished(session.id)
        with pytest.raises(SessionConflict, match=f"^Session already {status}$") as error:
            await harness.runner.cancel(session.id)
        assert error.value.session.status.value == status


# ---- failures stay inside their job -----------------------------------------------------


async def test_a_crashing_worker_fails_its_job_with_exit_code_and_stderr_others_go_on(
    make_runner, caplog
):
    harness = await make_runner()
    crash = await harness.submit("crash")
    fine = await harness.submit("succeed")
    crashed = await harness.finished(crash.id)
    assert crashed.status is SessionStatus.FAILED
    assert crashed.error == "worker exited with code 3: RuntimeError: boom"
    assert (await harness.finished(fine.id)).status is SessionStatus.COMPLETED
    (failure,) = [line for line in transitions(caplog, crash.id) if " failed: " in line]
    assert "Traceback" in failure  # the log gets the whole stderr tail
    assert (await harness.finished((await harness.submit("succeed")).id)).results


async def test_garbage_on_stdout_is_logged_and_never_kills_the_job(make_runner, caplog):
    harness = await make_runner()
    session = await harness.submit("garbage")
    done = await harness.finished(session.id)
    assert done.status is SessionStatus.COMPLETED
    warnings = [line for line in transitions(caplog, session.id) if "not an event" in line]
    assert len(warnings) == 4


async def test_stdout_ending_without_a_terminal_event_fails_the_job(make_runner):
    harness = await make_runner()
    session = await harness.submit("no_terminal")
    done = await harness.finished(session.id)
    assert done.status is SessionStatus.FAILED
    assert done.error == "worker exited with code 0"


async def test_an_error_event_fails_the_job_with_the_workers_message(make_runner):
    harness = await make_runner()
    session = await harness.submit("error")
    done = await harness.finished(session.id)
    assert done.status is SessionStatus.FAILED
    assert done.error == "no video stream"


async def test_a_job_over_the_time_limit_is_terminated_and_failed(make_runner):
    harness = await make_runner(job_timeout=1)
    session = await harness.submit("sleep")
    pid = await harness.sleeping(session.id)
    done = await harness.finished(session.id)
    assert done.status is SessionStatus.FAILED
    assert done.error == "Job exceeded the time limit of 1 s"
    assert not process_alive(pid)


async def test_a_worker_that_cannot_start_fails_its_job_and_the_runner_goes_on(
    make_runner, tmp_path
):
    harness = await make_runner(worker_command=(str(tmp_path / "no-such-worker"),))
    for _ in range(2):
        done = await harness.finished((await harness.submit("succeed")).id)
        assert done.status is SessionStatus.FAILED
        assert done.error == "Could not start the worker process"
    assert harness.runner.running_count == 0


async def test_deleting_a_running_session_stops_its_worker(make_runner):
    harness = await make_runner()
    session = await harness.submit("sleep")
    pid = await harness.sleeping(session.id)
    waiting = asyncio.ensure_future(harness.runner.wait(session.id))
    await harness.sessions.delete(session.id)
    with pytest.raises(SessionNotFound):
        await asyncio.wait_for(waiting, WAIT)
    # The supervisor notices at the worker's next event; nothing here waits for that.
    assert await eventually(lambda: harness.runner.running_count == 0)
    assert not process_alive(pid)


# ---- waiting and closing ----------------------------------------------------------------


async def test_wait_returns_a_finished_session_at_once_and_a_running_one_when_it_ends(
    make_runner,
):
    harness = await make_runner()
    session = await harness.submit("sleep")
    await harness.sleeping(session.id)
    waiting = asyncio.ensure_future(harness.runner.wait(session.id))
    for _ in range(10):  # let the waiter reach its subscription
        await asyncio.sleep(0)
    assert not waiting.done()  # still running: the waiter waits
    cancelled = await harness.runner.cancel(session.id)
    assert await asyncio.wait_for(waiting, WAIT) == cancelled
    # Finished: answered without ever suspending, i.e. at once.
    at_once = harness.runner.wait(session.id)
    with pytest.raises(StopIteration) as answered:
        at_once.send(None)
    assert answered.value.value == cancelled


async def test_close_stops_workers_and_leaves_their_sessions_as_they_were(make_runner):
    """Interrupted, not failed: a later restart may run them again."""
    harness = await make_runner(max_concurrent=1)
    running = await harness.submit("sleep")
    pid = await harness.sleeping(running.id)
    queued = await harness.submit("sleep")
    await harness.runner.close()
    assert not process_alive(pid)
    assert (await harness.sessions.get(running.id)).status is SessionStatus.PROCESSING
    assert (await harness.sessions.get(queued.id)).status is SessionStatus.PENDING
    assert harness.runner.running_count == 0
    with pytest.raises(RunnerClosed):
        await harness.submit("succeed")
    await harness.runner.close()


async def test_waiters_are_released_when_the_server_shuts_down(make_runner):
    harness = await make_runner()
    session = await harness.submit("sleep")
    await harness.sleeping(session.id)
    waiting = asyncio.ensure_future(harness.runner.wait(session.id))
    await harness.runner.close()
    await harness.hub.close()
    with pytest.raises(RunnerClosed):
        await asyncio.wait_for(waiting, WAIT)


def test_repr_shows_node_state_and_slots(data_paths):
    queue = MemoryJobQueue(3)
    sessions = Sessions(MemoryStore(), EventHub(), LocalFiles(data_paths), queue.position)
    runner = JobRunner(
        sessions, queue, files=local_job_files(data_paths), model="m", max_concurrent=2
    )
    assert repr(runner) == "<JobRunner local not started running=0/2>"


async def test_on_finished_is_told_of_every_job_that_ran_with_its_outcome(data_paths):
    """The metrics hook: analysis type, final status and duration of each job that ran."""
    told: list[tuple[str, str, float]] = []
    queue, hub = MemoryJobQueue(10), EventHub()
    sessions = Sessions(MemoryStore(), hub, LocalFiles(data_paths), queue.position)
    runner = JobRunner(
        sessions,
        queue,
        files=local_job_files(data_paths),
        model="m",
        worker_command=FAKE_WORKER,
        on_finished=lambda *args: told.append(args),
    )
    await runner.start()
    try:
        ids = {}
        for mode in ("succeed", "crash", "sleep"):
            session = await sessions.create(new_session(data_paths))
            await runner.submit(session.id, AnalysisType.WORKOUT, {"mode": mode})
            ids[mode] = session.id
        for mode in ("succeed", "crash"):
            await asyncio.wait_for(runner.wait(ids[mode]), WAIT)
        await until_sleeping(sessions, ids["sleep"])
        await runner.cancel(ids["sleep"])
        assert await eventually(lambda: len(told) == 3)
    finally:
        await runner.close()
        await hub.close()
    assert sorted((kind, status) for kind, status, _ in told) == [
        ("workout", "cancelled"),
        ("workout", "completed"),
        ("workout", "failed"),
    ]
    assert all(seconds >= 0 for _, _, seconds in told)


async def until_sleeping(sessions, session_id):
    """Until the fake worker of a `sleep` job reports that it is running."""

    async def watch():
        async with contextlib.aclosing(sessions.hub.subscribe(session_id)) as events:
            async for event in events:
                if event.data.get("currentStep") == "Sleeping":
                    return

    await asyncio.wait_for(watch(), WAIT)
