"""WorkerProcess against tiny real child processes: events, stdin, stderr tail, termination."""

import asyncio
import json
import signal
import sys

import pytest

from protocol import AnalysisType, InvalidLine, JobSpec, Log, Partial, Progress, Result
from server.jobs.worker_process import STDERR_TAIL_BYTES, WorkerProcess
from tests.server.conftest import FAKE_WORKER, WAIT, dies, process_alive


def job(tmp_path, mode: str) -> JobSpec:
    return JobSpec(
        session_id="s-1",
        analysis_type=AnalysisType.HIGHLIGHTS,
        video_path=str(tmp_path / "video.mp4"),
        output_dir=str(tmp_path / "out"),
        model="test-model",
        params={"mode": mode},
        filename="video.mp4",
    )


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


async def all_events(worker: WorkerProcess) -> list:
    async def collect():
        return [event async for event in worker.events()]

    return await asyncio.wait_for(collect(), WAIT)


async def first_event(worker: WorkerProcess):
    events = worker.events()
    event = await asyncio.wait_for(anext(events), WAIT)
    await events.aclose()
    return event


@pytest.fixture
async def make_worker(tmp_path):
    """Factory: `await make_worker(mode)` -> a started fake worker that has its JobSpec."""
    made: list[WorkerProcess] = []

    async def make(mode: str = "succeed", *, command=FAKE_WORKER, **options) -> WorkerProcess:
        worker = WorkerProcess(**options)
        made.append(worker)
        await worker.start(command)
        await worker.send(job(tmp_path, mode))
        return worker

    yield make
    for worker in made:
        await worker.terminate()


async def test_events_are_decoded_in_order_until_stdout_ends(make_worker):
    worker = await make_worker("succeed")
    events = await all_events(worker)
    assert [type(e) for e in events] == [Progress, Partial, Log, Progress, Partial, Result]
    assert json.loads(events[-1].results["video_description"])["params"] == {"mode": "succeed"}
    assert await worker.wait(WAIT) == 0
    assert worker.describe_exit() == "worker exited with code 0"


async def test_garbage_lines_become_values_and_reading_goes_on(make_worker):
    worker = await make_worker("garbage")
    events = await all_events(worker)
    invalid = [e for e in events if isinstance(e, InvalidLine)]
    assert [e.line for e in invalid] == [
        "hello from a library",
        "{not json",
        "[1, 2, 3]",
        '{"type": "bogus"}',
    ]
    assert isinstance(events[-1], Result)


async def test_a_line_over_the_limit_is_skipped_as_one_invalid_line(make_worker):
    code = (
        "import sys; sys.stdin.readline(); "
        "print('x' * 10_000); "
        'print(\'{"type": "result", "results": {"ok": true}}\'); '
        "sys.stdout.write('y' * 5000)"
    )
    worker = await make_worker(command=python(code), limit=1024)
    events = await all_events(worker)
    assert len(events) == 3
    assert isinstance(events[0], InvalidLine) and "longer than" in events[0].reason
    assert events[0].line.startswith("xxxx")
    assert events[1] == Result({"ok": True})
    assert isinstance(events[2], InvalidLine)  # the unterminated last line, too long as well


async def test_a_result_line_of_several_megabytes_is_read_whole(make_worker):
    worker = await make_worker("huge_result")
    (event,) = await all_events(worker)
    assert isinstance(event, Result)
    assert len(event.results["video_description"]) == 8_000_000


async def test_stdin_stays_open_after_the_job_is_sent(make_worker):
    """A worker takes the end of its stdin as "the server is gone", so send() keeps it open."""
    worker = await make_worker("stdin_check")
    events = await all_events(worker)
    assert events[-1] == Result({"stdin": "open"})


async def test_terminate_returns_once_the_process_is_gone(make_worker):
    worker = await make_worker("sleep")
    assert isinstance(await first_event(worker), Progress)
    await worker.terminate()
    assert not process_alive(worker.pid)
    assert worker.returncode == -signal.SIGTERM
    assert worker.describe_exit() == "worker was killed by signal SIGTERM"


async def test_terminate_is_idempotent_and_shared_by_concurrent_callers(make_worker, monkeypatch):
    signals = []
    send = WorkerProcess._signal_group

    def counted(pgid, signum):
        signals.append(signum)
        return send(pgid, signum)

    monkeypatch.setattr(WorkerProcess, "_signal_group", staticmethod(counted))
    worker = await make_worker("sleep")
    await first_event(worker)
    await asyncio.wait_for(asyncio.gather(*(worker.terminate() for _ in range(5))), WAIT)
    await worker.terminate()
    assert not process_alive(worker.pid)
    assert signals.count(signal.SIGTERM) == 1  # one termination, shared by all six calls


async def test_a_child_ignoring_sigterm_is_killed_with_sigkill(make_worker):
    worker = await make_worker("ignore_sigterm")
    await first_event(worker)
    await worker.terminate()
    assert not process_alive(worker.pid)
    assert worker.returncode == -signal.SIGKILL
    assert worker.describe_exit() == "worker was killed by signal SIGKILL"


async def test_terminate_kills_the_whole_process_group(make_worker, tmp_path):
    worker = await make_worker("grandchild")
    await first_event(worker)
    grandchild = int((tmp_path / "out" / "grandchild.pid").read_text())
    assert process_alive(grandchild)
    await worker.terminate()
    assert not process_alive(worker.pid)
    assert not process_alive(grandchild)


async def test_a_leftover_child_holding_stdout_cannot_hide_the_leaders_death(make_worker, tmp_path):
    """The leader exits; its child keeps stdout open; stdout must still end."""
    worker = await make_worker("orphan")
    events = await all_events(worker)
    assert [type(e) for e in events] == [Progress]
    await worker.wait(WAIT)
    assert worker.returncode == 3
    # Its stdout ended because the child was killed; the kernel finishes it right after.
    assert await dies(int((tmp_path / "out" / "grandchild.pid").read_text()))


async def test_describe_exit_gives_the_exit_code_and_the_stderr_tail(make_worker):
    worker = await make_worker("crash")
    await all_events(worker)
    await worker.wait(WAIT)
    assert worker.describe_exit(tail_lines=1) == "worker exited with code 3: RuntimeError: boom"
    full = worker.describe_exit()
    assert full.startswith("worker exited with code 3: Traceback")
    assert full.endswith("RuntimeError: boom")


async def test_stderr_is_read_concurrently_into_a_bounded_tail(make_worker):
    """100 KB on stderr would fill the pipe; the child finishes, and the tail keeps the end."""
    worker = await make_worker("noisy_stderr")
    events = await all_events(worker)
    assert isinstance(events[-1], Result)
    await worker.wait(WAIT)
    assert len(worker.stderr_tail) <= STDERR_TAIL_BYTES
    assert worker.stderr_tail.endswith("the very last line\n")


async def test_sending_to_a_child_that_already_died_is_not_an_error(make_worker):
    worker = WorkerProcess()
    await worker.start(python("import sys; sys.exit(5)"))
    try:
        assert await worker.wait(WAIT) == 5
        await worker.send(JobSpec("s", AnalysisType.WORKOUT, "v", "o", "m"))
        assert await all_events(worker) == []
        assert worker.describe_exit() == "worker exited with code 5"
    finally:
        await worker.terminate()


async def test_terminate_is_safe_before_start_and_after_exit(make_worker):
    never_started = WorkerProcess()
    await never_started.terminate()
    assert never_started.describe_exit() == "worker was never started"
    worker = await make_worker("no_terminal")
    await all_events(worker)
    await worker.wait(WAIT)
    await worker.terminate()
    assert worker.returncode == 0


async def test_a_cancelled_terminate_call_still_ends_the_process(make_worker):
    worker = await make_worker("ignore_sigterm")
    await first_event(worker)
    caller = asyncio.ensure_future(worker.terminate())
    await asyncio.sleep(0.1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await dies(worker.pid)  # with no further call: the termination went on
    await asyncio.wait_for(worker.terminate(), WAIT)
    assert worker.returncode == -signal.SIGKILL


async def test_starting_twice_is_refused(make_worker):
    worker = await make_worker("sleep")
    with pytest.raises(RuntimeError):
        await worker.start(FAKE_WORKER)


def test_repr_names_the_process_and_its_state():
    assert repr(WorkerProcess(label="probe")) == "<WorkerProcess probe pid=None not started>"
