"""The session as data: its status, its snapshot and the domain errors (its wire body: bodies.py).

No aiohttp here: the store, the runner and the event fan-out all speak in these terms,
and only the HTTP handlers turn the errors into status codes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from protocol import AnalysisType, JobResults, VideoInfo
from server.state.webhook_delivery import WebhookDelivery


class SessionStatus(str, Enum):
    """The values are the wire strings of API.md."""

    UPLOADED = "uploaded"
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (SessionStatus.COMPLETED, SessionStatus.FAILED, SessionStatus.CANCELLED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime) -> str:
    """UTC ISO-8601 with a `Z`, to the second, as API.md shows."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Session:
    """A snapshot of one session. Changes make a new snapshot (`dataclasses.replace`)."""

    id: str
    status: SessionStatus
    video: VideoInfo  # what the probe found; `filename` is the client's name, metadata only
    upload_path: str  # server path of the uploaded video; never shown to clients
    output_dir: str  # server path of the worker's artifacts; never shown to clients
    analysis_type: AnalysisType | None = None
    params: dict[str, Any] = field(default_factory=dict)
    progress: float = 0.0
    current_step: str | None = None
    error: str | None = None  # the message a client sees when the session failed
    results: JobResults | None = None  # the worker's results, artifact names relative
    attempts: int = 0  # how many times a worker was started for it (restarts re-run jobs)
    webhook: WebhookDelivery | None = None  # where its end is announced, if anywhere
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)

    def replace(self, **changes: Any) -> Session:
        """A new snapshot with `changes` and a fresh `updated_at`."""
        changes.setdefault("updated_at", utcnow())
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        kind = self.analysis_type.value if self.analysis_type else "-"
        return f"<Session {self.id} {self.status.value} {kind} {self.progress:.2f}>"


# ---- domain errors: nouns, mapped to HTTP only by the handlers ----------------------------


class SessionError(Exception):
    """Base of the errors a client can cause; `str()` is a message for the client."""


class SessionNotFound(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__("Session not found")
        self.session_id = session_id


class ResultsNotReady(SessionError):
    def __init__(self, session: Session) -> None:
        super().__init__("Results not ready")
        self.session = session


class SessionConflict(SessionError):
    """The session's status does not allow what was asked (e.g. cancel a completed job)."""

    def __init__(self, session: Session, message: str) -> None:
        super().__init__(message)
        self.session = session


class ServerBusy(SessionError):
    """The server has no room for this now; the client should retry after a while."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class QueueFull(ServerBusy):
    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("Too many jobs queued; try again later", retry_after_seconds)


class TooManyUploads(ServerBusy):
    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("Too many uploads in progress; try again shortly", retry_after_seconds)


class InvalidVideo(SessionError):
    """The upload is not a video the worker can read; `str()` says why, without server paths."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RunnerClosed(SessionError):
    def __init__(self) -> None:
        super().__init__("The server is shutting down")
