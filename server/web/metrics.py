"""`GET /metrics`: the service's state and history in the Prometheus text format.

Each application has its own `CollectorRegistry` (kept under `keys.METRICS`), never
prometheus_client's global default one, so two apps in one process (tests) keep apart.
Counts that the store and the runner already know (sessions by status, queue depth,
running jobs) are read at scrape time rather than kept twice; what only passes by is
counted as it happens: job durations through the runner's `on_finished` hook and upload
bytes through the upload slots, as each chunk is written.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from server.jobs.runner import JobRunner
from server.state.models import SessionStatus
from server.state.sessions import Sessions

NAMESPACE = "smolvlm"
# Jobs take from seconds (a short clip) to an hour (MAX_VIDEO_SECONDS of footage).
JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
# What generate_latest writes: the classic text format every Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The instruments of one application, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Memory and CPU of the server process itself (not of its workers).
        ProcessCollector(registry=self.registry)
        self.sessions = Gauge(
            "sessions",
            "Sessions in the store, by status",
            ["status"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "Jobs waiting for a worker slot",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.running_jobs = Gauge(
            "running_jobs",
            "Jobs holding a worker slot",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "job_duration_seconds",
            "Time from a job's start to its end, by analysis type and final status",
            ["analysis_type", "outcome"],
            namespace=NAMESPACE,
            buckets=JOB_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "upload_bytes",
            "Bytes of uploaded files written to disk (rejected uploads included)",
            namespace=NAMESPACE,
            registry=self.registry,
        )

    def job_finished(self, analysis_type: str, outcome: str, seconds: float) -> None:
        """The runner's `on_finished` hook: one observation per job that ran to an end."""
        self.job_duration.labels(analysis_type=analysis_type, outcome=outcome).observe(seconds)

    def uploaded(self, size: int) -> None:
        """`size` more upload bytes were written to disk."""
        self.upload_bytes.inc(size)

    async def render(self, sessions: Sessions, runner: JobRunner) -> bytes:
        """The text exposition, with the gauges read from the sessions and runner now."""
        found = await sessions.list()
        counts = dict.fromkeys(SessionStatus, 0)
        for session in found:
            counts[session.status] += 1
        for status, count in counts.items():
            self.sessions.labels(status=status.value).set(count)
        self.queue_depth.set(await runner.queue_depth())
        self.running_jobs.set(runner.running_count)
        return generate_latest(self.registry)
