"""The job runner: jobs taken from a queue, at most `max_concurrent` worker processes, one
supervisor per job.

The runner owns every task it needs: one dispatcher that takes jobs from the queue while
a slot is free, one supervisor task per running job (keyed by session id) with a keeper
that renews the job's claim, and a sweep that queues again what nobody holds. Handlers
only call its methods. A supervisor spawns the worker, sends the JobSpec, folds the
worker's events into the session through `Sessions`, and always ends the process before
it returns, so a slot is free only once its process is gone.

What varies between one machine and a cluster is composed in, never subclassed: the
`JobQueue` hands out claims (trivial leases in memory, leases that lapse in Redis) and the
`CancelChannel` carries cancels to the runner holding the job. On a cluster:
  * a runner takes a job only when it has a free slot, and a keeper renews its lease
    while the worker runs (a heartbeat, never a bound on the job's length);
  * a runner that died leaves its jobs idle; once the lease lapses another takes them
    over and runs them from the start (the status says so), at most `max_attempts` times;
  * an attempt that lost its lease (another runner holds it, or renewals failed for a
    whole lease) stops its worker without touching the session: the new owner runs it;
  * the keeper also reads the session at each renewal, so a lost cancel signal costs a
    third of a lease, never the cancel.

A session is queued before it is stored `pending`, and stays in the queue's order until
the runner that took it has marked it `processing`, so a pending session always has a
queue position. Cancelling is recorded first (the session becomes `cancelled`, which no
later event can change), then carried out (the job leaves the queue, or its worker is
terminated, here or by its owner), and answered once the worker is gone.

A store that is away for a moment (Redis restarting, SQLite locked by another process)
makes a supervisor wait, not fail: each of its reads and writes is tried again for up to
`store_patience` seconds (`server.state.patience.outlast`; one lease on a cluster).
Meanwhile it reads no more of the worker's stdout, so the worker blocks on its pipe and no
event is dropped. A store away for longer hands the job over the way a crash would: its
worker is stopped and the job runs again from the start (`_give_back`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocol import (
    AnalysisType,
    Error,
    ErrorCode,
    InvalidLine,
    JobResults,
    JobSpec,
    Log,
    ModelReport,
    ModelState,
    Partial,
    Progress,
    Result,
    ResultsBroken,
    decode_results,
)
from server.jobs.cancel_channel import CancelChannel, LocalCancelChannel
from server.jobs.job_files import JobFiles, JobFilesLost
from server.jobs.job_queue import Claim, JobQueue
from server.jobs.model_health import ModelHealth
from server.jobs.warm_pool import WarmPool
from server.jobs.worker_process import WorkerProcess
from server.state.models import (
    QueueFull,
    RunnerClosed,
    ServerBusy,
    Session,
    SessionConflict,
    SessionError,
    SessionNotFound,
    SessionStatus,
)
from server.state.patience import PatienceExhausted, outlast
from server.state.redis_connection import raise_if_cancelling
from server.state.sessions import Sessions
from server.state.webhook_delivery import WebhookDelivery

T = TypeVar("T")

log = logging.getLogger("server.jobs.runner")
# Worker `log` events: kept apart so the runner's own lines are one per job transition.
worker_log = logging.getLogger("server.jobs.runner.worker")

# A finished worker exits by itself; this lets it free the model and flush before a signal.
EXIT_AFTER_RESULT_SECONDS = 5.0
# Once stdout has ended the worker is exiting; this waits for its exit status and stderr.
EXIT_AFTER_EOF_SECONDS = 5.0
# Lines of stderr put in a failed session's error; the log line gets the whole tail.
ERROR_TAIL_LINES = 1
# A runner with a free slot waits this long for a job per take, then looks for lapsed leases.
TAKE_BLOCK_SECONDS = 1.0
# Renewals per lease: two can be lost (a slow Redis, a pause) before the lease lapses.
RENEWALS_PER_LEASE = 3
# After the shared state went away, try again this often.
RETRY_SECONDS = 0.5
# A job taken from a shared queue may come a moment before its submitter stored it pending;
# the taker looks this often, for at most a third of a lease (before anyone could take it over).
HANDOFF_POLL_SECONDS = 0.01
# Unfinished sessions that nothing holds are looked for this often (and once at start).
ORPHAN_SWEEP_SECONDS = 60.0
# How long a job's supervisor waits for an unavailable store on one machine before it hands
# the job over: long enough for a lock held by a backup or a migration, short of a stuck
# worker's slot. On a cluster the lease is the bound (after it another node may take over).
STORE_PATIENCE_SECONDS = 60.0
STARTING_STEP = "Starting worker"
RESTARTED_STEP = "Queued again after a server restart"
STORE_AWAY_STEP = "Queued again: the session store was unavailable while it ran"
LOST_NODE_STEP = "Running again from the start (attempt {n}): the node running it stopped"
COMPLETED_STEP = "Completed"
CANCELLED_STEP = "Cancelled"
CANCELLED_QUEUED_STEP = "Cancelled while queued"


@dataclass(eq=False)
class _Job:
    """A running job: its claim, the supervisor task and the process it supervises."""

    claim: Claim
    worker: WorkerProcess
    task: asyncio.Task[None] = field(init=False)
    stopping: bool = False
    started_at: float | None = None  # loop time when its worker was given the job
    cancelled: bool = False  # stopped because its session was cancelled (or deleted)
    handed_over: bool = False  # stopped because the store stayed away: it runs again

    @property
    def session_id(self) -> str:
        return self.claim.session_id


@dataclass(frozen=True)
class _Outcome:
    """How a run ended: results, or an error for the client plus detail for the log."""

    results: JobResults | None = None
    error: str = ""
    detail: str = ""


class JobRunner:
    """Runs sessions from `queue` through worker processes, at most `max_concurrent` at once."""

    def __init__(
        self,
        sessions: Sessions,
        queue: JobQueue,
        *,
        files: JobFiles,
        model: str,
        cancels: CancelChannel | None = None,
        node_id: str = "local",
        runs_jobs: bool = True,
        max_attempts: int = 3,
        max_concurrent: int = 2,
        job_timeout: float | None = None,
        worker_command: Sequence[str] = (sys.executable, "-m", "inference_worker"),
        worker_env: Mapping[str, str] | None = None,
        on_finished: Callable[[str, str, float], None] | None = None,
        warm_workers: int = 0,
        orphan_sweep_seconds: float = ORPHAN_SWEEP_SECONDS,
        store_patience: float | None = None,
    ) -> None:
        """`cancels` carries cancels to other runners on the same queue (none by default).

        `node_id` names this runner to the queue; with `runs_jobs` off it only submits.
        A job handed out more than `max_attempts` times fails. `worker_env` adds to (or
        overrides) the server's environment for every worker. `on_finished(analysis_type,
        status, seconds)` is told of every job that ran and ended completed, failed or
        cancelled (not of jobs interrupted by a shutdown). `warm_workers` idle workers are
        kept started with the model loaded. A running job waits up to `store_patience`
        seconds for an unavailable session store (default: the lease where leases lapse,
        else STORE_PATIENCE_SECONDS), then is handed over and runs again from the start.
        """
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._sessions = sessions
        self._queue = queue
        self._cancels = cancels or LocalCancelChannel()
        self._files = files
        self._model = model
        self._node_id = node_id
        self._runs_jobs = runs_jobs
        self._max_attempts = max_attempts
        self._max_concurrent = max_concurrent
        self._job_timeout = job_timeout
        self._command = tuple(worker_command)
        self._env = {**os.environ, **worker_env} if worker_env is not None else None
        self._on_finished = on_finished
        self._orphan_sweep_seconds = orphan_sweep_seconds
        if store_patience is None:
            store_patience = queue.lease_seconds if queue.lease_lapses else STORE_PATIENCE_SECONDS
        self._store_patience = store_patience
        self._health = ModelHealth(model, warm=warm_workers > 0)
        self._warm = WarmPool(warm_workers, self._command, model, self._env, self._health)
        self._jobs: dict[str, _Job] = {}
        self._lock = asyncio.Lock()  # serialises submit, start and cancel decisions
        self._wakeup = asyncio.Event()  # a slot freed up
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self._closed = False

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start taking work: hear cancels, sweep for orphans, and take jobs if it runs them."""
        if self._closed:
            raise RunnerClosed()
        if self._tasks:
            return
        await self._cancels.start(self._cancel_signal)
        self._accepting = True
        self._tasks.append(asyncio.create_task(self._sweep(), name="orphan sweep"))
        if self._runs_jobs:
            await asyncio.to_thread(self._files.sweep_scratch)
            self._tasks.append(asyncio.create_task(self._dispatch(), name="job dispatcher"))
            self._warm.fill()

    async def recover(self) -> int:
        """Queue again, oldest first, the unfinished sessions that no queue or claim holds.

        A previous server process left them (a restart, a crash, kill -9), or a node died
        at a moment that left one behind. A worker's run cannot be resumed, so each starts
        over, with its old artifacts removed and a status that says why. No grace period is
        needed: a session is queued before it is stored pending, and `requeue` refuses
        what something holds. Returns how many were queued.
        """
        unfinished = [
            session
            for status in (SessionStatus.PENDING, SessionStatus.PROCESSING)
            for session in await self._sessions.list(status=status)
        ]
        queued = 0
        for session in sorted(unfinished, key=lambda s: s.created_at):
            queued += await self._requeue(session.id, RESTARTED_STEP)
        return queued

    async def _requeue(self, session_id: str, step: str) -> bool:
        """Queue an unfinished session again that nothing holds, from the start; whether it was.

        Queued before it is stored pending, like a submit, and taken out again if storing
        fails, so that a caller may simply try again.
        """
        async with self._lock:
            if not await self._queue.requeue(session_id):
                return False
            try:
                try:
                    session = await self._sessions.get(session_id)
                except SessionNotFound:
                    session = None
                if session is None or session.status.is_terminal:  # it ended since
                    await self._queue.remove(session_id)
                    return False
                changes: dict[str, Any] = {}
                if session.status is SessionStatus.PROCESSING:
                    # Its taker waits for `pending`: the old artifacts are gone before it starts.
                    await self._files.discard(session.output_dir)
                    changes["status"] = SessionStatus.PENDING
                await self._sessions.update(
                    session_id,
                    progress=0.0,
                    current_step=step,
                    error=None,
                    results=None,
                    **changes,
                )
            except BaseException:
                with contextlib.suppress(ServerBusy):
                    await self._queue.remove(session_id)
                raise
        log.info("session %s queued again (%s)", session_id, step)
        return True

    async def _give_back(self, claim: Claim, step: str) -> None:
        """Hand over a claimed job that cannot go on here because the store stayed away.

        A lease that lapses does it by itself: whichever runner is free takes the job over
        as a dead node's (an attempt of `max_attempts`). A claim that never lapses is
        finished, and the job queued again from the start once the store is back (a cancel
        or a close stops the wait; the orphan sweep then finds it).
        """
        if self._queue.lease_lapses:
            return
        await self._queue.finish(claim)
        requeue = functools.partial(self._requeue, claim.session_id, step)
        await outlast(requeue, patience=None, what=f"session {claim.session_id}: queue again")

    async def _patiently(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        """`operation()`, waiting out an unavailable store for up to `store_patience` s."""
        return await outlast(operation, patience=self._store_patience, what=what)

    async def _sweep(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._orphan_sweep_seconds)
            try:
                await self.recover()
            except ServerBusy:
                log.warning("could not look for unfinished sessions nobody holds; next round")

    async def close(self) -> None:
        """Refuse new work and stop every running worker; return once they are gone.

        The sessions of stopped and queued jobs stay as they are (processing, pending):
        they were not cancelled by anyone, they were interrupted. On a cluster their leases
        lapse and other nodes run them again. Safe to call twice.
        """
        async with self._lock:  # a submit under way finishes first, so its job is stopped too
            self._accepting = False
            self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
        await self._cancels.close()

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
            async with self._queued(session_id):
                session = await self._sessions.update(
                    session_id,
                    status=SessionStatus.PENDING,
                    analysis_type=analysis_type,
                    params=dict(params),
                    progress=0.0,
                    current_step=None,
                    error=None,
                    results=None,
                    webhook=webhook or uploaded.webhook,
                )
            await self._log_queued(session)
        return session

    async def submit_new(self, session: Session) -> Session:
        """Store a new session, already `pending` with its analysis and params, and queue it.

        One step under the runner's lock: its first status already has its queue position.
        Raises QueueFull or RunnerClosed, and then nothing is stored.
        """
        async with self._lock:
            if not self._accepting:
                raise RunnerClosed()
            async with self._queued(session.id):
                await self._sessions.create(session)
            await self._log_queued(session)
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

    @contextlib.asynccontextmanager
    async def _queued(self, session_id: str) -> AsyncIterator[None]:
        """Queue the session around the block that stores it pending; unqueue it if that fails.

        Queued first: whoever reads the session as pending then finds it queued.
        """
        await self._queue.push(session_id, extra=self._free_slots())
        try:
            yield
        except BaseException:
            with contextlib.suppress(ServerBusy):
                await self._queue.remove(session_id)
            raise

    async def _log_queued(self, session: Session) -> None:
        assert session.analysis_type is not None
        log.info(
            "session %s queued (%s, position %s)",
            session.id,
            session.analysis_type.value,
            await self._queue.position(session.id),
        )

    def _free_slots(self) -> int:
        """Slots of this runner that take a job at once (none if it runs no jobs)."""
        return max(self._max_concurrent - len(self._jobs), 0) if self._runs_jobs else 0

    async def has_room(self) -> bool:
        """Whether a submit now would be accepted as far as capacity goes.

        The queue's limit is on jobs that wait: this runner's free slots take as many at once.
        """
        return await self._queue.has_room(self._free_slots())

    async def cancel(self, session_id: str) -> Session:
        """Cancel wherever the job is; returns its `cancelled` snapshot once its worker is gone.

        Idempotent. A queued job leaves the queue; a running job's worker (and its
        process group) is terminated, here or by the runner that holds it (waited for
        within a bound; a dead holder's lease ends it). Raises SessionConflict for a
        completed or failed session, SessionNotFound for an unknown one.
        """
        async with self._lock:
            session = await self._mark_cancelled(session_id)
            removed = await self._queue.remove(session_id)
        if removed:
            await self._publish_positions()
            return session
        job = self._jobs.get(session_id)
        if job is not None:
            job.cancelled = True
            await self._stop(job)
        else:
            await self._cancels.until_gone(session_id)
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

    # ---- taking jobs --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Take a job whenever a slot is free; the take itself waits for one to come.

        The loop also stops on `_closed`: on Python 3.11 a cancel that lands inside a Redis
        call's own timeout can be uncancelled away, and then only the flag ends the loop.
        """
        while not self._closed:
            raise_if_cancelling()
            if len(self._jobs) >= self._max_concurrent:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                claim = await self._queue.take(self._node_id, TAKE_BLOCK_SECONDS)
                if claim is None:
                    continue
                try:
                    await self._begin(claim)
                except PatienceExhausted as exc:
                    log.warning("session %s not started: %s", claim.session_id, exc)
                    await self._give_back(claim, STORE_AWAY_STEP)
            except ServerBusy:
                raise_if_cancelling()
                log.warning("cannot reach the job queue to take jobs; trying again")
                await asyncio.sleep(RETRY_SECONDS)

    async def _begin(self, claim: Claim) -> None:
        """Start a claimed job, or end the claim at once if there is nothing (more) to run.

        Raises PatienceExhausted if the store stays away meanwhile (the caller hands over).
        """
        running = self._jobs.get(claim.session_id)
        if running is not None and (running.stopping or running.handed_over):
            # Its attempt here is ending (it lost the lease, or was handed over because the
            # store was away too long): the new attempt starts once the old one is gone.
            await asyncio.wait({running.task})
        elif running is not None:
            # Our own lease lapsed (this node stalled) and we took it back: the attempt
            # under way goes on, its keeper renews the lease again.
            log.warning("session %s: took back its own lapsed lease", claim.session_id)
            return
        if claim.deliveries == 1:
            await self._until_handed_over(claim.session_id)
        what = f"session {claim.session_id}: start"
        async with self._lock:
            if not await self._patiently(
                functools.partial(self._queue.renew, claim, self._node_id), what
            ):
                return  # taken out meanwhile (a cancel, or a requeue undone to be tried again)
            session = await self._mark_processing(claim)
            if session is None:
                await self._patiently(functools.partial(self._queue.finish, claim), what)
                return
            if not await self._patiently(functools.partial(self._queue.started, claim), what):
                # Cancelled between the two: recorded first, so nothing is left to run.
                await self._patiently(functools.partial(self._queue.finish, claim), what)
                return
            self._start_job(claim)
        await self._publish_positions()

    async def _until_handed_over(self, session_id: str) -> None:
        """Wait (bounded) until the submitter has stored the session pending, or it ended.

        The submitter queues before it stores, so a runner on another node may read the
        entry first; one that never comes (its submitter died) is dropped by the caller.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._queue.lease_seconds / RENEWALS_PER_LEASE
        while loop.time() < deadline:
            try:
                session = await self._sessions.get(session_id)
            except SessionNotFound:
                session = None
            except ServerBusy:
                session = None  # the store is away: `_mark_processing` waits for it
            if session is not None and (
                session.status is SessionStatus.PENDING or session.status.is_terminal
            ):
                return
            await asyncio.sleep(HANDOFF_POLL_SECONDS)

    async def _mark_processing(self, claim: Claim) -> Session | None:
        """The claimed session marked `processing` for this attempt; None if nothing is to run."""
        session_id = claim.session_id
        what = f"session {session_id}: start"
        try:
            session = await self._patiently(functools.partial(self._sessions.get, session_id), what)
        except SessionNotFound:
            return None
        runnable = session.status is SessionStatus.PENDING or (
            claim.deliveries > 1 and session.status is SessionStatus.PROCESSING
        )
        if not runnable:
            if not session.status.is_terminal:
                log.warning(
                    "session %s: queued but never stored pending (%s); dropped",
                    session_id,
                    session.status.value,
                )
            return None
        if claim.deliveries > self._max_attempts:
            given_up = functools.partial(
                self._sessions.update,
                session_id,
                status=SessionStatus.FAILED,
                error=f"The job was started {claim.deliveries - 1} times and each time the "
                "node running it stopped before it ended",
            )
            await self._patiently(given_up, what)
            log.warning("session %s failed: its nodes kept dying", session_id)
            return None
        step = STARTING_STEP
        if claim.deliveries > 1:
            # Each attempt starts over: what the lost one wrote goes first.
            await self._files.discard(session.output_dir)
            step = LOST_NODE_STEP.format(n=claim.deliveries)
            log.warning("session %s taken over (attempt %d)", session_id, claim.deliveries)
        processing = functools.partial(
            self._sessions.update,
            session_id,
            status=SessionStatus.PROCESSING,
            attempts=session.attempts + 1,
            progress=0.0,
            current_step=step,
            error=None,
            results=None,
        )
        session = await self._patiently(processing, what)
        return session if session.status is SessionStatus.PROCESSING else None

    async def _publish_positions(self) -> None:
        """Tell every queued session its new place (a cosmetic update: errors are logged)."""
        try:
            for session_id in await self._queue.queued():
                await self._sessions.publish_status(session_id)
        except SessionError:
            log.warning("could not publish the queue positions", exc_info=True)

    def _start_job(self, claim: Claim) -> None:
        # Taken here, synchronously, so that cancel and close always see the job's process.
        job = _Job(claim, self._warm.take() or WorkerProcess())
        job.task = asyncio.create_task(self._supervise(job), name=f"supervise {claim.session_id}")
        job.task.add_done_callback(lambda task: self._job_done(job, task))
        self._jobs[claim.session_id] = job

    def _job_done(self, job: _Job, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: supervisor crashed", job.session_id, exc_info=task.exception())
        self._free_slot(job)

    def _free_slot(self, job: _Job) -> None:
        if self._jobs.get(job.session_id) is job:
            del self._jobs[job.session_id]
            self._wakeup.set()

    async def _stop(self, job: _Job) -> None:
        """Cancel a job's supervisor (which terminates its worker); return once it is gone."""
        if not job.stopping:
            job.stopping = True
            job.task.cancel()
        # asyncio.wait, not await: a caller that is itself cancelled must not cancel it again.
        await asyncio.wait({job.task})
        await job.worker.terminate()

    def _interrupt(self, job: _Job, *, cancelled: bool) -> None:
        """Stop a job from inside this runner (its supervisor terminates the worker)."""
        if job.stopping:
            return
        job.cancelled = cancelled
        job.stopping = True
        job.task.cancel()

    async def _cancel_signal(self, session_id: str) -> None:
        """A cancel recorded elsewhere: stop the job here if the store says it is cancelled."""
        job = self._jobs.get(session_id)
        if job is None or job.stopping:
            return
        try:
            session = await self._sessions.get(session_id)
        except SessionNotFound:
            session = None
        except ServerBusy:
            return  # the keeper reads it again shortly
        # Only what the store says counts: a stale signal never stops a live job.
        if session is None or session.status is SessionStatus.CANCELLED:
            self._interrupt(job, cancelled=True)

    # ---- supervising one job, under its claim -------------------------------------------

    async def _supervise(self, job: _Job) -> None:
        keeper = asyncio.create_task(self._keep_lease(job), name=f"lease {job.session_id}")
        over = False
        try:
            await self._supervise_run(job)
            over = not job.handed_over  # handed over: `_give_back` has seen to its claim
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            # A job interrupted otherwise (a shutdown, a lost lease) stays someone's to run.
            if over or job.cancelled:
                with contextlib.suppress(ServerBusy):
                    await self._queue.finish(job.claim)
            if job.cancelled:
                with contextlib.suppress(ServerBusy):
                    await self._cancels.gone(job.session_id)

    async def _keep_lease(self, job: _Job) -> None:
        """Renew the job's lease; stop the job if the lease is lost or its session cancelled.

        A lease not renewed for a whole lease is lost even if the store is back by then and
        nobody took the job yet: one rule for every node (after a lease any of them may
        take it over), the same bound the job's writes wait (`store_patience`).
        """
        loop = asyncio.get_running_loop()
        lease = self._queue.lease_seconds
        renewed = loop.time()
        while True:
            raise_if_cancelling()
            await asyncio.sleep(lease / RENEWALS_PER_LEASE)
            if self._queue.lease_lapses and loop.time() - renewed >= lease:
                log.warning("session %s: lease lapsed; stopping this attempt", job.session_id)
                self._interrupt(job, cancelled=False)
                return
            try:
                held = await self._queue.renew(job.claim, self._node_id)
                if held:
                    renewed = loop.time()
                status = (await self._sessions.get(job.session_id)).status
            except SessionNotFound:
                status = None
            except ServerBusy:
                # Unknown: keep working while the lease may still be ours.
                held, status = loop.time() - renewed < lease, SessionStatus.PROCESSING
            if not held:
                log.warning("session %s: lease lost; stopping this attempt", job.session_id)
                self._interrupt(job, cancelled=False)
                return
            if status is None or status is SessionStatus.CANCELLED:
                self._interrupt(job, cancelled=True)
                return

    async def _supervise_run(self, job: _Job) -> None:
        session_id = job.session_id
        try:
            await self._run(job)
        except SessionNotFound:
            log.info("session %s was deleted while running; its worker is stopped", session_id)
        except PatienceExhausted as exc:
            log.warning("session %s handed over: %s", session_id, exc)
            job.handed_over = True
            await job.worker.terminate()
            await self._give_back(job.claim, STORE_AWAY_STEP)
        except Exception:
            log.exception("session %s: unexpected error while supervising", session_id)
            with contextlib.suppress(SessionError, PatienceExhausted):
                await self._record(
                    session_id, _Outcome(error="Internal error while running the job"), 0.0
                )
        finally:
            await job.worker.terminate()
            self._free_slot(job)  # the process is gone: what is left needs no slot
            await self._report_finished(job)

    async def _report_finished(self, job: _Job) -> None:
        if self._on_finished is None or job.started_at is None:
            return
        try:
            session = await self._sessions.get(job.session_id)
        except (SessionNotFound, ServerBusy):
            return  # gone, or the store is away: a metric is not worth a wait
        if session.status.is_terminal and session.analysis_type is not None:
            seconds = asyncio.get_running_loop().time() - job.started_at
            self._on_finished(session.analysis_type.value, session.status.value, seconds)

    async def _run(self, job: _Job) -> None:
        session_id = job.session_id
        what = f"session {session_id}: start"
        session = await self._patiently(functools.partial(self._sessions.get, session_id), what)
        if session.status is not SessionStatus.PROCESSING:
            return  # cancelled between its start and now
        started = job.started_at = asyncio.get_running_loop().time()
        try:
            outcome = await asyncio.wait_for(self._work(job, session), self._job_timeout)
        except asyncio.TimeoutError:
            await job.worker.terminate()
            outcome = _Outcome(error=f"Job exceeded the time limit of {self._job_timeout:g} s")
        except JobFilesLost as exc:
            await job.worker.terminate()
            outcome = _Outcome(error=str(exc))
        finally:
            # However the job ended (also cancelled, or stopped by a shutdown): its scratch
            # goes. Shielded, so that a second cancel cannot cut the removal short.
            await asyncio.shield(self._files.release(session_id))
        await self._record(session_id, outcome, asyncio.get_running_loop().time() - started)
        if job.worker.pid is not None:
            await job.worker.wait(EXIT_AFTER_RESULT_SECONDS)

    async def _work(self, job: _Job, session: Session) -> _Outcome:
        """Hand the job to its worker (warm, or started now) and follow its events to the end."""
        assert session.analysis_type is not None
        warm = job.worker.pid is not None
        # A cold worker loads its model while the video is brought to this node.
        if not warm and not await self._start_worker(job.worker):
            return _Outcome(error="Could not start the worker process")
        local = await self._files.prepare(session.id, session.upload_path, session.output_dir)
        spec = JobSpec(
            session_id=session.id,
            analysis_type=session.analysis_type,
            video_path=str(local.video),
            output_dir=str(local.output),
            model=self._model,
            params=session.params,
            filename=session.video.filename,
            video_info=session.video,  # probed at upload: the worker need not probe again
        )
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
            try:
                results = decode_results(terminal.results, session.analysis_type)
            except ResultsBroken as exc:
                return _Outcome(
                    error=f"The worker's results broke the contract: {exc}",
                    detail=f"results that break the contract ({exc}): {terminal.results!r:.2000}",
                )
            # What the results link to is stored before the session may say `completed`.
            await self._files.keep(local.output, session.output_dir)
            return _Outcome(results=results)
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
            f"<JobRunner {self._node_id} {state} running={len(self._jobs)}/{self._max_concurrent}>"
        )
