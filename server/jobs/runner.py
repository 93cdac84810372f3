"""The job runner: a queue, at most `max_concurrent` worker processes, one supervisor per job.

The runner owns every task it needs: one dispatcher that starts queued jobs as slots free
up, and one supervisor task per running job, keyed by session id. Handlers only call its
methods. A supervisor spawns the worker, sends the JobSpec, folds the worker's events
into the session through `Sessions`, and always ends the process before it returns, so a
slot is free only once its process is gone.

Cancelling is recorded first (the session becomes `cancelled`, which no later event can
change), then carried out (the job leaves the queue, or its supervisor is cancelled and
its worker terminated).

A store that is away for a moment (Redis restarting, SQLite locked by another process)
makes a supervisor wait, not fail: each of its reads and writes is tried again for up to
`store_patience` seconds (`server.state.patience.outlast`). Meanwhile it reads no more of
the worker's stdout, so the worker blocks on its pipe and no event is dropped. A store
away for longer hands the job over the way a restart would: its worker is stopped and
the job is queued again from the start once the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import (
    AnalysisType,
    Error,
    ErrorCode,
    InvalidLine,
    JobSpec,
    Log,
    ModelReport,
    ModelState,
    Partial,
    Progress,
    Result,
)
from server.jobs.job_queue import MemoryJobQueue
from server.jobs.model_health import ModelHealth
from server.jobs.warm_pool import WarmPool
from server.jobs.worker_process import WorkerProcess
from server.state.models import (
    QueueFull,
    RunnerClosed,
    Session,
    SessionConflict,
    SessionError,
    SessionNotFound,
    SessionStatus,
)
from server.state.paths import DataPaths
from server.state.patience import PatienceExhausted, StoreUnavailable, outlast
from server.state.sessions import Sessions
from server.state.webhook_delivery import WebhookDelivery

log = logging.getLogger("server.jobs.runner")
# Worker `log` events: kept apart so the runner's own lines are one per job transition.
worker_log = logging.getLogger("server.jobs.runner.worker")

# A finished worker exits by itself; this lets it free the model and flush before a signal.
EXIT_AFTER_RESULT_SECONDS = 5.0
# Once stdout has ended the worker is exiting; this waits for its exit status and stderr.
EXIT_AFTER_EOF_SECONDS = 5.0
# Lines of stderr put in a failed session's error; the log line gets the whole tail.
ERROR_TAIL_LINES = 1
STARTING_STEP = "Starting worker"
RESTARTED_STEP = "Queued again after a server restart"
STORE_AWAY_STEP = "Queued again: the session store was unavailable while it ran"
# How long a job's supervisor waits for an unavailable store before it hands the job over:
# long enough for a lock held by a backup or a migration, short of a stuck worker's slot.
STORE_PATIENCE_SECONDS = 60.0
COMPLETED_STEP = "Completed"
CANCELLED_STEP = "Cancelled"
CANCELLED_QUEUED_STEP = "Cancelled while queued"


@dataclass(eq=False)
class _Job:
    """A running job: the supervisor task and the process it supervises."""

    session_id: str
    worker: WorkerProcess
    task: asyncio.Task[None] = field(init=False)
    stopping: bool = False
    started_at: float | None = None  # loop time when it became `processing`
    claim: Any = None  # what a shared queue handed out (its lease), if any
    cancelled: bool = False  # stopped because its session was cancelled
    handed_over: bool = False  # stopped because the store stayed away: it runs again


@dataclass(frozen=True)
class _Outcome:
    """How a run ended: results, or an error for the client plus detail for the log."""

    results: dict[str, Any] | None = None
    error: str = ""
    detail: str = ""


class JobRunner:
    """Runs submitted sessions through worker processes, at most `max_concurrent` at once."""

    def __init__(
        self,
        sessions: Sessions,
        queue: MemoryJobQueue,
        *,
        paths: DataPaths,
        model: str,
        max_concurrent: int = 2,
        job_timeout: float | None = None,
        worker_command: Sequence[str] = (sys.executable, "-m", "inference_worker"),
        worker_env: Mapping[str, str] | None = None,
        on_finished: Callable[[str, str, float], None] | None = None,
        warm_workers: int = 0,
        store_patience: float = STORE_PATIENCE_SECONDS,
    ) -> None:
        """`worker_env` adds to (or overrides) the server's environment for every worker.

        `on_finished(analysis_type, status, seconds)` is told of every job that ran and
        ended completed, failed or cancelled (not of jobs interrupted by a shutdown).
        `warm_workers` idle workers are kept started with the model loaded. A running
        job waits up to `store_patience` seconds for an unavailable session store, then
        is handed over (queued again from the start).
        """
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._sessions = sessions
        self._queue = queue
        self._paths = paths
        self._model = model
        self._max_concurrent = max_concurrent
        self._job_timeout = job_timeout
        self._command = tuple(worker_command)
        self._env = {**os.environ, **worker_env} if worker_env is not None else None
        self._on_finished = on_finished
        self._store_patience = store_patience
        self._health = ModelHealth(model, warm=warm_workers > 0)
        self._warm = WarmPool(warm_workers, self._command, model, self._env, self._health)
        self._jobs: dict[str, _Job] = {}
        self._lock = asyncio.Lock()  # serialises submit and cancel decisions
        self._wakeup = asyncio.Event()
        self._positions_changed = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._accepting = False
        self._closed = False

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start taking work."""
        if self._closed:
            raise RunnerClosed()
        if self._dispatcher is None:
            self._paths.create()
            self._dispatcher = asyncio.create_task(self._dispatch(), name="job dispatcher")
            self._accepting = True
            self._warm.fill()

    async def recover(self) -> int:
        """Queue again, oldest first, the jobs a previous server process left unfinished.

        Their sessions were pending or processing when that process stopped (a restart,
        a crash, kill -9). A worker's run cannot be resumed, so each starts over, with its
        old artifacts removed and a status that says why. Returns how many were queued.
        """
        async with self._lock:
            unfinished = [
                session
                for session in await self._sessions.list()
                if session.status in (SessionStatus.PENDING, SessionStatus.PROCESSING)
            ]
            for session in sorted(unfinished, key=lambda s: s.created_at):
                await self._queue_again(session, RESTARTED_STEP)
                log.info("session %s queued again after a restart", session.id)
            if unfinished:
                self._positions_changed = True
                self._wakeup.set()
        return len(unfinished)

    async def _queue_again(self, session: Session, step: str) -> bool:
        """Queue an unfinished session again from the start, its old artifacts removed.

        False if it ended meanwhile (a cancel), and then it is not queued. Call it holding
        `_lock`, so that a cancel sees the session either queued or not yet pending.
        """
        await asyncio.to_thread(shutil.rmtree, session.output_dir, True)
        session = await self._sessions.update(
            session.id,
            status=SessionStatus.PENDING,
            progress=0.0,
            current_step=step,
            error=None,
            results=None,
        )
        if session.status is not SessionStatus.PENDING:
            return False
        await self._queue.push(session.id, over_limit=True)
        return True

    async def close(self) -> None:
        """Refuse new work and stop every running worker; return once they are gone.

        The sessions of stopped and queued jobs stay as they are (processing, pending):
        they were not cancelled by anyone, they were interrupted. Safe to call twice.
        """
        async with self._lock:  # a submit under way finishes first, so its job is stopped too
            self._accepting = False
            self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        jobs = list(self._jobs.values())
        if jobs:
            log.info("runner closing: stopping %d running job(s)", len(jobs))
        for job in jobs:
            if not job.stopping:  # those being cancelled already are on their way out
                job.stopping = True
                job.task.cancel()
        await asyncio.gather(*(job.task for job in jobs), return_exceptions=True)
        # Normally done by each supervisor; this also covers one cancelled before it began.
        await asyncio.gather(*(job.worker.terminate() for job in jobs))
        await self._warm.close()

    # ---- what the HTTP layer calls ------------------------------------------------------

    async def submit(
        self,
        session_id: str,
        analysis_type: AnalysisType,
        params: dict[str, Any],
        webhook: WebhookDelivery | None = None,
    ) -> Session:
        """Queue an `uploaded` session for analysis; returns its `pending` snapshot.

        `params` must already be validated; a `webhook` replaces the session's. Raises
        SessionNotFound, SessionConflict (the session already ran or runs), QueueFull, or
        RunnerClosed.
        """
        async with self._lock:
            uploaded = await self._check_submittable(session_id)
            start_now = not self._queue and len(self._jobs) < self._max_concurrent
            session = await self._mark_pending(uploaded, analysis_type, params, webhook)
            if start_now:
                self._start_job(session_id)
                log.info("session %s queued (%s, starts now)", session_id, analysis_type.value)
            else:
                await self._queue.push(session_id)
                await self._sessions.publish_status(session_id)  # now with its position
                log.info(
                    "session %s queued (%s, position %d)",
                    session_id,
                    analysis_type.value,
                    await self._queue.position(session_id),
                )
        return session

    async def _check_submittable(self, session_id: str) -> Session:
        """The session if it may be queued now (runner open, uploaded, room); else raise."""
        if not self._accepting:
            raise RunnerClosed()
        session = await self._sessions.get(session_id)
        if session.status is not SessionStatus.UPLOADED:
            raise SessionConflict(
                session, f"Session already started (status: {session.status.value})"
            )
        if not await self.has_room():
            raise QueueFull(self._queue.retry_after_seconds)
        return session

    async def _mark_pending(
        self,
        session: Session,
        analysis_type: AnalysisType,
        params: dict[str, Any],
        webhook: WebhookDelivery | None,
    ) -> Session:
        return await self._sessions.update(
            session.id,
            status=SessionStatus.PENDING,
            analysis_type=analysis_type,
            params=dict(params),
            progress=0.0,
            current_step=None,
            error=None,
            results=None,
            webhook=webhook or session.webhook,
        )

    async def has_room(self) -> bool:
        """Whether a submit now would be accepted as far as capacity goes."""
        if await self._queue.has_room():
            return True
        return not self._queue and len(self._jobs) < self._max_concurrent

    async def cancel(self, session_id: str) -> Session:
        """Cancel a session; returns its `cancelled` snapshot once its worker is gone.

        Idempotent. A queued job leaves the queue; a running job's worker (and its
        process group) is terminated. Raises SessionConflict for a completed or failed
        session, SessionNotFound for an unknown one.
        """
        async with self._lock:
            session = await self._mark_cancelled(session_id)
            if await self._queue.remove(session_id):
                self._positions_changed = True
                self._wakeup.set()
        job = self._jobs.get(session_id)
        if job is not None:
            await self._stop(job)
        return session

    async def _mark_cancelled(self, session_id: str) -> Session:
        """Record the cancel (idempotent); SessionConflict if the session ended otherwise."""
        session = await self._sessions.get(session_id)
        if session.status is not SessionStatus.CANCELLED:
            if not session.status.is_terminal:
                queued = session.status is SessionStatus.PENDING
                session = await self._sessions.update(
                    session_id,
                    status=SessionStatus.CANCELLED,
                    current_step=CANCELLED_QUEUED_STEP if queued else CANCELLED_STEP,
                )
            if session.status is not SessionStatus.CANCELLED:
                raise SessionConflict(session, f"Session already {session.status.value}")
            log.info("session %s cancelled", session_id)
        return session

    async def wait(self, session_id: str) -> Session:
        """Wait until the session is terminal and return it.

        Raises SessionNotFound (also if it is deleted meanwhile) or RunnerClosed (the
        server is shutting down).
        """
        session = await self._sessions.get(session_id)
        if session.status.is_terminal:
            return session
        # Starts from the current state, so whatever happened since the read is not missed.
        async with contextlib.aclosing(self._sessions.hub.subscribe(session_id)) as events:
            async for event in events:
                if event.is_terminal:
                    break
        session = await self._sessions.get(session_id)
        if not session.status.is_terminal:
            raise RunnerClosed()
        return session

    async def queue_position(self, session_id: str) -> int | None:
        """1-based place of a pending session in the queue, else None."""
        return await self._queue.position(session_id)

    @property
    def running_count(self) -> int:
        """Jobs holding a slot (their worker is starting, running or being stopped)."""
        return len(self._jobs)

    async def queue_depth(self) -> int:
        """Jobs waiting in the queue for a slot."""
        return await self._queue.depth()

    @property
    def model_health(self) -> ModelHealth:
        """Whether the workers can load the model, as warm workers and jobs last reported."""
        return self._health

    # ---- dispatching --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Start queued jobs as slots free up; tell queued sessions their new positions."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            shifted, self._positions_changed = self._positions_changed, False
            while self._queue and len(self._jobs) < self._max_concurrent:
                self._start_job(self._queue.pop())
                shifted = True
            if shifted:
                for session_id in self._queue:
                    try:
                        await self._sessions.publish_status(session_id)
                    except Exception:
                        # A position update is cosmetic; the dispatcher must live on.
                        log.exception("session %s: could not publish its position", session_id)

    def _start_job(self, session_id: str, claim: Any = None) -> None:
        # Taken here, synchronously, so that cancel and close always see the job's process.
        job = _Job(session_id, self._warm.take() or WorkerProcess(), claim=claim)
        job.task = asyncio.create_task(self._supervise(job), name=f"supervise {session_id}")
        job.task.add_done_callback(lambda task: self._job_done(job, task))
        self._jobs[session_id] = job

    def _job_done(self, job: _Job, task: asyncio.Task[None]) -> None:
        if self._jobs.get(job.session_id) is job:
            del self._jobs[job.session_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: supervisor crashed", job.session_id, exc_info=task.exception())
        self._wakeup.set()

    async def _stop(self, job: _Job) -> None:
        """Cancel a job's supervisor (which terminates its worker); return once it is gone."""
        if not job.stopping:
            job.stopping = True
            job.task.cancel()
        # asyncio.wait, not await: a caller that is itself cancelled must not cancel it again.
        await asyncio.wait({job.task})
        await job.worker.terminate()

    # ---- supervising one job ------------------------------------------------------------

    async def _supervise(self, job: _Job) -> None:
        session_id = job.session_id
        try:
            await self._run(job)
        except SessionNotFound:
            log.info("session %s was deleted while running; its worker is stopped", session_id)
        except PatienceExhausted as exc:
            log.warning("session %s handed over: %s", session_id, exc)
            job.handed_over = True
            await job.worker.terminate()
            await self._hand_over(job)
        except Exception:
            log.exception("session %s: unexpected error while supervising", session_id)
            with contextlib.suppress(SessionError, PatienceExhausted):
                await self._record(
                    session_id, _Outcome(error="Internal error while running the job"), 0.0
                )
        finally:
            await job.worker.terminate()
            await self._report_finished(job)

    async def _hand_over(self, job: _Job) -> None:
        """Queue a job whose store stayed away again, as a restart would, once it is back.

        Waits for the store as long as it takes (the session stays `processing` in it
        meanwhile, so a restart would queue it again too); a cancel or close stops it.
        """

        async def queue_again() -> None:
            async with self._lock:
                try:
                    session = await self._sessions.get(job.session_id)
                    if session.status.is_terminal:
                        return  # cancelled meanwhile
                    if not await self._queue_again(session, STORE_AWAY_STEP):
                        return
                except SessionNotFound:
                    return  # deleted meanwhile: nothing to run
                log.info("session %s queued again", job.session_id)
                self._positions_changed = True
                self._wakeup.set()

        await outlast(queue_again, patience=None, what=f"session {job.session_id}: queue again")

    async def _patiently(self, operation: Callable[[], Any], what: str) -> Any:
        """`operation()`, waiting out an unavailable store for up to `store_patience` s."""
        return await outlast(operation, patience=self._store_patience, what=what)

    async def _report_finished(self, job: _Job) -> None:
        if self._on_finished is None or job.started_at is None:
            return
        try:
            session = await self._sessions.get(job.session_id)
        except (SessionNotFound, StoreUnavailable):
            return  # gone, or the store is away: a metric is not worth a wait
        if session.status.is_terminal and session.analysis_type is not None:
            seconds = asyncio.get_running_loop().time() - job.started_at
            self._on_finished(session.analysis_type.value, session.status.value, seconds)

    async def _run(self, job: _Job) -> None:
        session_id = job.session_id
        what = f"session {session_id}: start"
        pending = await self._patiently(functools.partial(self._sessions.get, session_id), what)
        if pending.status is not SessionStatus.PENDING:
            return  # cancelled before its turn came
        start = functools.partial(
            self._sessions.update,
            session_id,
            status=SessionStatus.PROCESSING,
            attempts=pending.attempts + 1,
            progress=0.0,
            current_step=STARTING_STEP,
        )
        session = await self._patiently(start, what)
        if session.status is not SessionStatus.PROCESSING:
            return
        started = job.started_at = asyncio.get_running_loop().time()
        try:
            outcome = await asyncio.wait_for(self._work(job, session), self._job_timeout)
        except asyncio.TimeoutError:
            await job.worker.terminate()
            outcome = _Outcome(error=f"Job exceeded the time limit of {self._job_timeout:g} s")
        await self._record(session_id, outcome, asyncio.get_running_loop().time() - started)
        if job.worker.pid is not None:
            await job.worker.wait(EXIT_AFTER_RESULT_SECONDS)

    async def _work(self, job: _Job, session: Session) -> _Outcome:
        """Hand the job to its worker (warm, or started now) and follow its events to the end."""
        assert session.analysis_type is not None
        spec = JobSpec(
            session_id=session.id,
            analysis_type=session.analysis_type,
            video_path=session.upload_path,
            output_dir=session.output_dir,
            model=self._model,
            params=session.params,
            filename=session.video.filename,
            video_info=session.video,  # probed at upload: the worker need not probe again
        )
        await asyncio.to_thread(Path(session.output_dir).mkdir, parents=True, exist_ok=True)
        warm = job.worker.pid is not None
        if not warm and not await self._start_worker(job.worker):
            return _Outcome(error="Could not start the worker process")
        log.info(
            "session %s started (attempt %d, pid %d%s)",
            session.id,
            session.attempts,
            job.worker.pid,
            ", warm" if warm else "",
        )
        terminal, heard = await self._deliver(job.worker, spec)
        if terminal is None and warm and not heard:
            # A warm worker that died while idle, or as the job reached it, did no work:
            # the job gets a fresh process instead of failing for it.
            log.warning(
                "session %s: warm worker ended before the job began (%s); starting a new one",
                session.id,
                job.worker.describe_exit(),
            )
            await job.worker.terminate()
            job.worker = WorkerProcess()
            if not await self._start_worker(job.worker):
                return _Outcome(error="Could not start the worker process")
            terminal, heard = await self._deliver(job.worker, spec)
        if isinstance(terminal, Result):
            self._health.report(ModelState.READY)
            return _Outcome(results=terminal.results)
        if isinstance(terminal, Error):
            if terminal.error == ErrorCode.MODEL_UNAVAILABLE.value:
                self._health.report(ModelState.UNAVAILABLE, terminal.message)
            return _Outcome(error=terminal.message, detail=f"{terminal.error}: {terminal.message}")
        # Stdout ended with no terminal event: the worker died. Say how.
        await job.worker.wait(EXIT_AFTER_EOF_SECONDS)
        return _Outcome(
            error=job.worker.describe_exit(tail_lines=ERROR_TAIL_LINES),
            detail=job.worker.describe_exit(),
        )

    async def _start_worker(self, worker: WorkerProcess) -> bool:
        try:
            await worker.start(self._command, self._env)
        except OSError:
            log.exception("could not start a worker process")
            return False
        return True

    async def _deliver(
        self, worker: WorkerProcess, spec: JobSpec
    ) -> tuple[Result | Error | None, bool]:
        """Send the JobSpec and follow the events; the terminal one, and whether any came."""
        try:
            await worker.send(spec)
        except (BrokenPipeError, ConnectionResetError):
            return None, False  # it was already gone; its exit says how
        terminal, lines = await self._follow(spec.session_id, worker)
        return terminal, lines > 0

    async def _follow(
        self, session_id: str, worker: WorkerProcess
    ) -> tuple[Result | Error | None, int]:
        """Fold the worker's events into the session until its terminal event or stdout's end.

        Returns the terminal event (None if stdout ended first) and how many lines came
        (a warm worker's model report, sent before it had the job, does not count).
        """
        lines = 0
        async with contextlib.aclosing(worker.events()) as events:
            async for event in events:
                if isinstance(event, ModelReport):
                    # A warm worker taken before its pool heard its report.
                    self._health.report(event.state, event.reason)
                    continue
                lines += 1
                # Waiting here reads no further: the worker blocks on its full pipe.
                if isinstance(event, Progress):
                    progress = functools.partial(
                        self._sessions.update,
                        session_id,
                        progress=event.progress,
                        current_step=event.step,
                    )
                    await self._patiently(progress, f"session {session_id}: progress")
                elif isinstance(event, Partial):
                    partial = functools.partial(
                        self._sessions.add_partial, session_id, event.kind, event.item
                    )
                    await self._patiently(partial, f"session {session_id}: partial")
                elif isinstance(event, Log):
                    level = logging.getLevelName(event.level.value.upper())
                    worker_log.log(level, "session %s worker: %s", session_id, event.message)
                elif isinstance(event, InvalidLine):
                    log.warning(
                        "session %s: worker printed a line that is not an event (%s): %r",
                        session_id,
                        event.reason,
                        event.line,
                    )
                elif isinstance(event, (Result, Error)):
                    return event, lines
        return None, lines

    async def _record(self, session_id: str, outcome: _Outcome, seconds: float) -> None:
        """Store how the run ended and log the transition, unless it was cancelled first."""
        what = f"session {session_id}: end"
        if outcome.results is not None:
            completed = functools.partial(
                self._sessions.update,
                session_id,
                status=SessionStatus.COMPLETED,
                results=outcome.results,
                current_step=COMPLETED_STEP,
            )
            session = await self._patiently(completed, what)
            if session.status is SessionStatus.COMPLETED:
                log.info("session %s completed in %.1f s", session_id, seconds)
            return
        failed = functools.partial(
            self._sessions.update, session_id, status=SessionStatus.FAILED, error=outcome.error
        )
        session = await self._patiently(failed, what)
        if session.status is SessionStatus.FAILED:
            log.warning(
                "session %s failed: %s (after %.1f s)",
                session_id,
                outcome.detail or outcome.error,
                seconds,
            )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._accepting else "not started"
        return (
            f"<JobRunner {state} running={len(self._jobs)}/{self._max_concurrent} "
            f"queued={len(self._queue)}>"
        )
