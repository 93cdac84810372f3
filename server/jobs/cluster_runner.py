"""The job runner of a cluster node: jobs from the shared Redis queue, under a lease.

What stays as on one machine: this node supervises its own worker processes, one per
job, and cancel terminates the process group. What changes:
  * a node takes a job only when it has a free slot, and holds it under a lease that a
    keeper renews while the worker runs (a heartbeat, never a bound on the job's length);
  * a node that died leaves its jobs idle; once the lease lapses another node takes them
    over and runs them from the start (the status says so), at most MAX_JOB_ATTEMPTS times;
  * an attempt that lost its lease (another node holds it, or renewals failed for a whole
    lease) stops its worker without touching the session: the new owner runs it;
  * while Redis is away, a running job's writes wait for it (`server.state.patience`) and
    its worker waits on its pipe; once the lease is lost that way the job is handed over
    as above, and this node may be the one that takes it again;
  * a cancel is recorded in the store first (durable), then reaches the owning node at
    once over pub/sub; the owner's keeper also reads the session at each renewal, so a
    missed signal costs a third of a lease, never the cancel. The node that answered the
    cancel waits until the owner says the process is gone, or its lease shows it dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from typing import Any

import redis.asyncio as aioredis

from protocol import AnalysisType
from server.jobs.redis_job_queue import Claim, RedisJobQueue
from server.jobs.runner import JobRunner, _Job
from server.state.models import (
    QueueFull,
    RunnerClosed,
    Session,
    SessionError,
    SessionNotFound,
    SessionStatus,
)
from server.state.redis_connection import (
    KEY_PREFIX,
    REDIS_ERRORS,
    StateUnavailable,
    raise_if_cancelling,
)
from server.state.sessions import Sessions
from server.state.webhook_delivery import WebhookDelivery

log = logging.getLogger("server.jobs.cluster_runner")

CANCEL_CHANNEL = KEY_PREFIX + "cancel"
GONE_CHANNEL = KEY_PREFIX + "gone"
# A node with a free slot waits this long for a job per read, then looks for lapsed leases.
TAKE_BLOCK_SECONDS = 1.0
# Renewals per lease: two can be lost (a slow Redis, a pause) before the lease lapses.
RENEWALS_PER_LEASE = 3
# A cancel waits for the owner's word this long at most (its worker ends in a few seconds).
CANCEL_WAIT_SECONDS = 15.0
# How often a waiting cancel looks whether the owner still holds the job (a lost message).
CANCEL_POLL_SECONDS = 0.5
# After Redis went away, try again this often.
REDIS_RETRY_SECONDS = 0.5
LOST_NODE_STEP = "Running again from the start (attempt {n}): the node running it stopped"


class ClusterRunner(JobRunner):
    """A `JobRunner` whose queue is the cluster's; with `runs_jobs` off it only submits."""

    def __init__(
        self,
        sessions: Sessions,
        queue: RedisJobQueue,
        client: aioredis.Redis,
        *,
        node_id: str,
        runs_jobs: bool = True,
        max_attempts: int = 3,
        **options: Any,
    ) -> None:
        # A job's writes wait for Redis as long as its lease may still be held, no longer.
        options.setdefault("store_patience", queue.lease_seconds)
        super().__init__(sessions, queue, **options)  # type: ignore[arg-type]
        self._cluster_queue = queue
        self._client = client
        self._node_id = node_id
        self._runs_jobs = runs_jobs
        self._max_attempts = max_attempts
        self._lease = queue.lease_seconds
        self._gone: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None

    # ---- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for cancels; take jobs too if this node runs them."""
        if self._closed:
            raise RunnerClosed()
        if self._listener is not None:
            return
        self._listener = asyncio.create_task(self._listen(), name="cancel signals")
        self._accepting = True
        if self._runs_jobs:
            self._paths.create()
            self._dispatcher = asyncio.create_task(self._dispatch(), name="job dispatcher")
            self._warm.fill()

    async def recover(self) -> int:
        """Nothing to do: queued and leased jobs wait in Redis for whichever node is free."""
        return 0

    async def close(self) -> None:
        """Stop this node's workers; their leases lapse and other nodes run the jobs again."""
        await super().close()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    # ---- what the HTTP layer calls ------------------------------------------------------

    async def submit(
        self,
        session_id: str,
        analysis_type: AnalysisType,
        params: dict[str, Any],
        webhook: WebhookDelivery | None = None,
    ) -> Session:
        async with self._lock:
            uploaded = await self._check_submittable(session_id)
            # Pending before it is queued: a node may take it the moment it is pushed.
            session = await self._mark_pending(uploaded, analysis_type, params, webhook)
            try:
                await self._queue.push(session_id)
            except QueueFull:  # another node filled the queue since the check
                await self._sessions.update(
                    session_id,
                    status=uploaded.status,
                    analysis_type=uploaded.analysis_type,
                    params=uploaded.params,
                    webhook=uploaded.webhook,
                )
                raise
            await self._sessions.publish_status(session_id)  # now with its position
            log.info("session %s queued (%s)", session_id, analysis_type.value)
        return session

    async def has_room(self) -> bool:
        return await self._queue.has_room()

    async def cancel(self, session_id: str) -> Session:
        """Cancel wherever the job is; returns once its worker is gone, or its owner is dead.

        Idempotent. Raises SessionConflict for a completed or failed session.
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
            await self._until_gone_elsewhere(session_id)
        return session

    # ---- taking jobs --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Take a job whenever a slot is free; the read itself waits for one to come.

        The loops of this class also stop on `_closed`: on Python 3.11 a cancel that lands
        inside a Redis call's own timeout can be uncancelled away, and then only the flag
        ends the loop (a runner's close would otherwise wait on it forever).
        """
        while not self._closed:
            raise_if_cancelling()
            if len(self._jobs) >= self._max_concurrent:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                claim = await self._cluster_queue.take(self._node_id, TAKE_BLOCK_SECONDS)
                if claim is not None:
                    await self._begin(claim)
            except (*REDIS_ERRORS, StateUnavailable):
                raise_if_cancelling()
                log.warning("cannot reach Redis to take jobs; trying again")
                await asyncio.sleep(REDIS_RETRY_SECONDS)

    async def _begin(self, claim: Claim) -> None:
        """Start a claimed job, or end it at once if there is nothing (more) to run."""
        session_id = claim.session_id
        running = self._jobs.get(session_id)
        if running is not None and running.stopping:
            # Its attempt here lost the lease (Redis was away too long) and is ending:
            # the new attempt starts once the old worker is gone.
            await asyncio.wait({running.task})
        elif running is not None:
            # Our own lease lapsed (this node stalled) and we took it back: the attempt
            # under way goes on, its keeper renews the lease again.
            log.warning("session %s: took back its own lapsed lease", session_id)
            return
        try:
            session = await self._sessions.get(session_id)
        except SessionNotFound:
            await self._cluster_queue.finish(claim)
            return
        if session.status.is_terminal:
            await self._cluster_queue.finish(claim)
            return
        if claim.deliveries > self._max_attempts:
            await self._sessions.update(
                session_id,
                status=SessionStatus.FAILED,
                error=f"The job was started {claim.deliveries - 1} times and each time the "
                "node running it stopped before it ended",
            )
            await self._cluster_queue.finish(claim)
            log.warning("session %s failed: its nodes kept dying", session_id)
            return
        if claim.deliveries > 1:
            # Each attempt starts over: what the lost one wrote goes first.
            await asyncio.to_thread(shutil.rmtree, session.output_dir, True)
            await self._sessions.update(
                session_id,
                status=SessionStatus.PENDING,
                progress=0.0,
                current_step=LOST_NODE_STEP.format(n=claim.deliveries),
                error=None,
                results=None,
            )
            log.warning("session %s taken over (attempt %d)", session_id, claim.deliveries)
        self._start_job(session_id, claim)
        if claim.deliveries == 1:
            await self._publish_positions()

    async def _publish_positions(self) -> None:
        """Tell every queued session its new place (a cosmetic update: errors are logged)."""
        try:
            for session_id in await self._queue.queued():
                await self._sessions.publish_status(session_id)
        except (SessionError, *REDIS_ERRORS):
            log.warning("could not publish the queue positions", exc_info=True)

    # ---- supervising, under a lease -----------------------------------------------------

    async def _supervise(self, job: _Job) -> None:
        keeper = asyncio.create_task(self._keep_lease(job), name=f"lease {job.session_id}")
        over = False
        try:
            await super()._supervise(job)
            over = True
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if (over and not job.handed_over) or job.cancelled:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._cluster_queue.finish(job.claim)
            if job.cancelled:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._client.publish(GONE_CHANNEL, job.session_id)

    async def _hand_over(self, job: _Job) -> None:
        """Leave the claim unfinished: once its lease lapses a node takes it over."""

    async def _keep_lease(self, job: _Job) -> None:
        """Renew the job's lease; stop the job if the lease is lost or its session cancelled.

        A lease not renewed for a whole lease is lost even if Redis is back by then and
        nobody took the job yet: one rule for every node (after a lease any of them may
        take it over), the same bound the job's writes wait (`store_patience`).
        """
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._lease / RENEWALS_PER_LEASE)
            if loop.time() - renewed >= self._lease:
                log.warning("session %s: lease lapsed; stopping this attempt", job.session_id)
                self._interrupt(job, cancelled=False)
                return
            try:
                held = await self._cluster_queue.renew(job.claim, self._node_id)
                if held:
                    renewed = loop.time()
                status = (await self._sessions.get(job.session_id)).status
            except SessionNotFound:
                status = None
            except (*REDIS_ERRORS, StateUnavailable):
                # Unknown: keep working while the lease may still be ours.
                held, status = loop.time() - renewed < self._lease, SessionStatus.PROCESSING
            if not held:
                log.warning("session %s: lease lost; stopping this attempt", job.session_id)
                self._interrupt(job, cancelled=False)
                return
            if status is None or status is SessionStatus.CANCELLED:
                self._interrupt(job, cancelled=True)
                return

    def _interrupt(self, job: _Job, *, cancelled: bool) -> None:
        """Stop a job from inside this node (its supervisor terminates the worker)."""
        if job.stopping:
            return
        job.cancelled = cancelled
        job.stopping = True
        job.task.cancel()

    # ---- signals between nodes ----------------------------------------------------------

    async def _until_gone_elsewhere(self, session_id: str) -> None:
        """Signal the owner and wait (bounded) until it says the worker is gone."""
        owner = await self._cluster_queue.owner(session_id)
        if owner is None or owner.idle_seconds > self._lease:
            return  # nobody runs it, or its node is dead: the lease ends it
        gone = self._gone.setdefault(session_id, asyncio.Event())
        await self._client.publish(CANCEL_CHANNEL, session_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_SECONDS
        while loop.time() < deadline:
            raise_if_cancelling()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(gone.wait(), CANCEL_POLL_SECONDS)
                return
            owner = await self._cluster_queue.owner(session_id)
            if owner is None or owner.idle_seconds > self._lease:
                return
        log.warning("session %s: its owner did not confirm the cancel in time", session_id)

    async def _listen(self) -> None:
        """Stop local jobs that were cancelled elsewhere; wake cancels waiting for an owner."""
        while not self._closed:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CANCEL_CHANNEL, GONE_CHANNEL)
                while not self._closed:
                    raise_if_cancelling()
                    message = await pubsub.get_message(timeout=TAKE_BLOCK_SECONDS)
                    if message is None:
                        continue
                    session_id = message["data"]
                    if message["channel"] == GONE_CHANNEL:
                        gone = self._gone.pop(session_id, None)
                        if gone is not None:
                            gone.set()
                    else:
                        await self._cancel_signal(session_id)
            except REDIS_ERRORS:
                raise_if_cancelling()
                log.warning("cancel signals lost; lease keepers still read each session")
                await asyncio.sleep(REDIS_RETRY_SECONDS)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()

    async def _cancel_signal(self, session_id: str) -> None:
        job = self._jobs.get(session_id)
        if job is None or job.stopping:
            return
        try:
            session = await self._sessions.get(session_id)
        except SessionNotFound:
            session = None
        except (*REDIS_ERRORS, StateUnavailable):
            return  # the keeper reads it again shortly
        # Only what the store says counts: a stale signal never stops a live job.
        if session is None or session.status is SessionStatus.CANCELLED:
            self._interrupt(job, cancelled=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._accepting else "not started"
        return (
            f"<ClusterRunner {self._node_id} {state} "
            f"running={len(self._jobs)}/{self._max_concurrent}>"
        )
