"""`create_app(config)`: the whole service as one aiohttp application, built the same way by
`python -m server` and by the tests.

Long-lived things (store, event hub, queue, sessions, job runner) are made in a
`cleanup_ctx` generator and closed after its `yield`. Streams and synchronous waits are
released earlier, in `on_shutdown`, because aiohttp waits for open requests before it
runs the cleanup: closing the hub and the runner there ends SSE streams and pending
synchronous analyses instead of letting them hold the shutdown open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from redis.asyncio import Redis

from server.config import Config
from server.jobs.cancel_channel import CancelChannel, LocalCancelChannel
from server.jobs.job_files import JobFiles
from server.jobs.job_queue import JobQueue, MemoryJobQueue
from server.jobs.probe import ProbeService
from server.jobs.redis_cancel_channel import RedisCancelChannel
from server.jobs.redis_job_queue import RedisJobQueue
from server.jobs.runner import JobRunner
from server.jobs.webhook_claims import DeliveryClaims, MemoryDeliveryClaims, RedisDeliveryClaims
from server.jobs.webhooks import WebhookDeliverer
from server.state.events import EventHub, EventLog
from server.state.janitor import Janitor
from server.state.redis_connection import check_durable, cluster_turn, connect
from server.state.redis_events import RedisEventLog
from server.state.redis_store import RedisStore
from server.state.redis_tus_records import RedisTusRecords
from server.state.sessions import Sessions
from server.state.sqlite_store import SqliteStore
from server.state.sqlite_tus_records import SqliteTusRecords
from server.state.store import SessionStore
from server.state.tus_records import TusRecords
from server.storage.files import SessionFiles
from server.storage.opening import open_files
from server.storage.paths import DataPaths
from server.web import app_keys as keys
from server.web import routes
from server.web.metrics import Metrics
from server.web.middlewares import Cors, api_key_middleware, errors
from server.web.tus import TusLimits, TusUploads
from server.web.upload_flow import UploadFlow, UploadLimits, UploadSlots

STORE_FILE = "sessions.db"
# Expiry is measured in hours; a sweep every few minutes keeps disk use close to the TTL.
SWEEP_INTERVAL_SECONDS = 300.0
# On a cluster, another node's upload in progress has files but no session yet; an upload
# writes every few milliseconds, so a folder untouched this long is nobody's.
ORPHAN_GRACE = timedelta(hours=1)


def create_app(config: Config) -> web.Application:
    """The application for `config`; its services start with it and stop with it."""
    cors = Cors(config.cors_origins)
    middlewares: list[Middleware] = [errors, cors.preflight]
    if config.api_key:
        middlewares.append(api_key_middleware(config.api_key))
    app = web.Application(middlewares=middlewares)
    app[keys.CONFIG] = config
    app[keys.METRICS] = Metrics()
    if config.cors_origins:  # with no origin allowed the hook would add nothing to a response
        app.on_response_prepare.append(cors.on_response_prepare)
    if config.serves_api:  # only uploads are probed
        app.cleanup_ctx.append(probing)
    app.cleanup_ctx.append(services)
    app.on_shutdown.append(release_waiters)
    if config.serves_api:
        add_routes(app)
    else:
        add_worker_routes(app)
    return app


async def services(app: web.Application) -> AsyncIterator[None]:
    """Start the store, hub, queue, sessions, runner and sweep; close them when the app stops.

    Sessions a previous process left pending or processing are queued again, and every
    stored session is announced on the (new, empty) event hub.
    """
    async with open_state(app[keys.CONFIG]) as state, run_services(app, state):
        yield


@dataclass(frozen=True)
class State:
    """The implementations this service runs on: where sessions, queue, events and files live,
    and how cancels reach the runner holding a job."""

    paths: DataPaths  # this node's DATA_DIR: the files themselves, or only scratch
    files: SessionFiles
    store: SessionStore
    resumable: TusRecords  # the records of resumable (tus) uploads, beside the sessions
    events: EventLog
    queue: JobQueue
    cancels: CancelChannel
    redis: Redis | None = None  # the cluster's Redis, when there is one


@contextlib.asynccontextmanager
async def open_state(config: Config) -> AsyncIterator[State]:
    """The one place that picks the implementations.

    With a Redis URL: sessions and events in Redis (checked to persist every write and
    never evict), shared by every node on the same Redis and the same files (a bucket, or
    one shared DATA_DIR). Without: SQLite in DATA_DIR, memory for queue and events, and
    cancels that stay in this process. Files: in the bucket of STORAGE_URL, else under
    DATA_DIR.
    """
    paths = DataPaths(config.data_dir)
    paths.create()
    async with open_files(config.storage_url, paths) as files:
        async with _open_sessions(config, paths, files) as state:
            yield state


@contextlib.asynccontextmanager
async def _open_sessions(
    config: Config, paths: DataPaths, files: SessionFiles
) -> AsyncIterator[State]:
    if config.redis_url is None:
        store = await SqliteStore(paths.root / STORE_FILE).open()
        sqlite_records = await SqliteTusRecords(paths.root / STORE_FILE).open()
        resumable: TusRecords = sqlite_records
        hub = EventHub()
        try:
            # A JobQueue, as State takes it; the Redis branch assigns its own class below.
            queue: JobQueue = MemoryJobQueue(config.max_queued_jobs)
            yield State(paths, files, store, resumable, hub, queue, LocalCancelChannel())
        finally:
            await hub.close()
            await sqlite_records.close()
            await store.close()
        return
    client = connect(config.redis_url)
    try:
        await check_durable(client)
        queue = RedisJobQueue(
            client, config.max_queued_jobs, lease_seconds=config.node_lease_seconds
        )
        await queue.open()
        events = await RedisEventLog(client).start()
        try:
            cancels = RedisCancelChannel(client, queue)
            resumable = RedisTusRecords(client, lock_lease_seconds=config.node_lease_seconds)
            yield State(paths, files, RedisStore(client), resumable, events, queue, cancels, client)
        finally:
            await events.close()
    finally:
        await client.aclose()


def make_runner(app: web.Application, state: State, sessions: Sessions) -> JobRunner:
    """This node's job runner on the state's queue and cancel channel."""
    config = app[keys.CONFIG]
    return JobRunner(
        sessions,
        state.queue,
        cancels=state.cancels,
        node_id=config.node_id,
        runs_jobs=config.runs_jobs,
        max_attempts=config.max_job_attempts,
        files=JobFiles(state.files, state.paths.scratch),
        model=config.model,
        max_concurrent=config.max_concurrent_jobs,
        job_timeout=config.job_timeout_seconds,
        worker_command=config.worker_command,
        on_finished=app[keys.METRICS].job_finished,
        warm_workers=config.warm_workers if config.runs_jobs else 0,
    )


@contextlib.asynccontextmanager
async def run_services(app: web.Application, state: State) -> AsyncIterator[None]:
    """Sessions, runner, webhooks, uploads and the sweep over `state`, while the app runs."""
    config = app[keys.CONFIG]
    files, hub, queue = state.files, state.events, state.queue
    sessions = Sessions(state.store, hub, files, queue.position)
    runner = make_runner(app, state, sessions)
    webhooks = app[keys.WEBHOOKS] = WebhookDeliverer(
        sessions,
        config.webhook_secret,
        claims=webhook_claims(config, state),
        allow_private=config.webhook_allow_private,
        first_retry_seconds=config.webhook_first_retry_seconds,
        retry_window_seconds=config.webhook_retry_seconds,
    )
    app[keys.PATHS] = state.paths
    app[keys.FILES] = files
    app[keys.HUB] = hub
    app[keys.SESSIONS] = sessions
    app[keys.RUNNER] = runner
    uploads = app[keys.UPLOADS] = UploadSlots(
        config.max_concurrent_uploads, on_bytes=app[keys.METRICS].uploaded
    )
    if config.serves_api:  # only then are there probes (and uploads)
        flow = app[keys.UPLOAD_FLOW] = UploadFlow(
            sessions=sessions,
            runner=runner,
            files=files,
            limits=UploadLimits(config.max_upload_bytes, config.max_video_seconds),
            slots=uploads,
            probes=app[keys.PROBES],
            webhooks=webhooks,
        )
        app[keys.TUS] = TusUploads(
            state.resumable,
            files,
            flow,
            TusLimits(config.max_upload_bytes, timedelta(hours=config.upload_expires_hours)),
            on_bytes=app[keys.METRICS].uploaded,
        )
    janitor = app[keys.JANITOR] = Janitor(
        sessions,
        files,
        timedelta(hours=config.session_ttl_hours),
        uploading=uploads.__contains__,
        resumable=state.resumable,
        **cluster_sweep(config, state),
    )
    await webhooks.start()  # first: a job may end as soon as the runner starts
    await runner.start()
    await runner.recover()
    await sessions.announce_all()
    sweeping = asyncio.create_task(janitor.run(SWEEP_INTERVAL_SECONDS), name="expiry sweep")
    try:
        yield
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
        await runner.close()
        await webhooks.close()


def cluster_sweep(config: Config, state: State) -> dict[str, Any]:
    """On a cluster: one sweep per round for all nodes, and orphans only once left alone."""
    if state.redis is None:
        return {}
    # Less than the interval, so that the next round always finds the turn free again.
    turn_seconds = SWEEP_INTERVAL_SECONDS * 0.9
    return {
        "turn": cluster_turn(state.redis, "sweep", config.node_id, turn_seconds),
        "orphan_grace": ORPHAN_GRACE,
    }


def webhook_claims(config: Config, state: State) -> DeliveryClaims:
    """On a cluster one node delivers each webhook, claimed in Redis; alone, in memory."""
    if state.redis is None:
        return MemoryDeliveryClaims()
    return RedisDeliveryClaims(state.redis, config.node_id, lease_seconds=config.node_lease_seconds)


async def probing(app: web.Application) -> AsyncIterator[None]:
    """Start the probe processes that vet uploads; end them when the app stops."""
    config = app[keys.CONFIG]
    probes = app[keys.PROBES] = ProbeService(
        config.probe_command, timeout=config.probe_timeout_seconds
    )
    await probes.start()
    try:
        yield
    finally:
        await probes.close()


async def release_waiters(app: web.Application) -> None:
    """End event streams and running jobs before aiohttp waits for open requests."""
    await app[keys.RUNNER].close()
    await app[keys.HUB].close()


def add_worker_routes(app: web.Application) -> None:
    """A `worker` node runs jobs and answers only for its own health and metrics."""
    routes.register(app, routes.WORKER_ROUTES)


def add_routes(app: web.Application) -> None:
    """Every route of API.md, from the route table."""
    routes.register(app, routes.API_ROUTES)
