"""What the HTTP edge says: JSON error bodies, domain errors as HTTP, results as API objects.

Every error the application produces goes through `error_response`, so all of them share
API.md's shape `{"error", "message", "sessionId"?, "code"}`. The results transform is a
pure function from the worker's results type to the API's: the worker names its artifacts
relative to its output dir and the client sees API URLs instead, never a server path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from protocol import (
    JobResults,
    ParamsError,
    WorkerHighlightsResults,
    WorkoutResults,
    model_display_name,
)
from server.state.bodies import status_body
from server.state.models import (
    InvalidVideo,
    ResultsNotReady,
    RunnerClosed,
    ServerBusy,
    Session,
    SessionConflict,
    SessionError,
    SessionNotFound,
    SessionStatus,
)
from server.storage.files import StorageUnavailable
from server.web.bodies import ErrorBody, HighlightsResults, Reel, Results, json_response

API_PREFIX = "/api/v1/video"

# How long a client told "shutting down" should wait before trying again (a restart).
_RESTART_RETRY_AFTER_SECONDS = 30


class ApiError(Exception):
    """An error the HTTP edge itself detects (bad id, too large, too long...), as data."""

    def __init__(
        self,
        code: int,
        error: str,
        message: str | None = None,
        *,
        session_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message or error)
        self.code = code
        self.error = error
        self.message = message
        self.session_id = session_id
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> web.Response:
        return error_response(
            self.code,
            self.error,
            self.message,
            session_id=self.session_id,
            headers=self.headers,
            **self.extra,
        )


def error_body(
    code: int,
    error: str,
    message: str | None = None,
    *,
    session_id: str | None = None,
    **extra: Any,
) -> ErrorBody:
    """API.md's error shape; `sessionId` only when one is known, `extra` as ErrorBody allows."""
    return ErrorBody(
        error=error, message=message or error, session_id=session_id, code=code, **extra
    )


def error_response(
    code: int,
    error: str,
    message: str | None = None,
    *,
    session_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A JSON error response in API.md's shape."""
    body = error_body(code, error, message, session_id=session_id, **extra)
    return json_response(body, status=code, headers=headers)


def api_error_for(exc: Exception) -> ApiError | None:
    """The HTTP meaning of a domain error, or None if `exc` is not one a client caused."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ParamsError):
        return ApiError(400, "Invalid parameters", str(exc))
    if isinstance(exc, SessionNotFound):
        return ApiError(404, "Session not found", session_id=exc.session_id)
    if isinstance(exc, ResultsNotReady):
        return results_not_ready(exc.session)
    if isinstance(exc, SessionConflict):
        return ApiError(
            409,
            "Conflict",
            str(exc),
            session_id=exc.session.id,
            status=exc.session.status,
        )
    if isinstance(exc, StorageUnavailable):
        return ApiError(
            503,
            "Storage unavailable",
            "The file store cannot be reached now; nothing was kept, try again shortly",
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )
    if isinstance(exc, ServerBusy):
        return ApiError(
            503,
            "Server busy",
            str(exc),
            headers={"Retry-After": str(max(1, int(exc.retry_after_seconds)))},
        )
    if isinstance(exc, RunnerClosed):
        return ApiError(
            503,
            "Service unavailable",
            str(exc),
            headers={"Retry-After": str(_RESTART_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, InvalidVideo):
        return ApiError(415, "Unsupported media type", str(exc))
    if isinstance(exc, SessionError):
        return ApiError(400, "Bad request", str(exc))
    return None


def results_not_ready(session: Session) -> ApiError:
    """400 for a session without results yet, with its status and progress (API.md §3)."""
    body = status_body(session)
    return ApiError(
        400,
        "Results not ready",
        f"The session is {session.status.value}",
        session_id=session.id,
        status=body.status,
        progress=body.progress,
    )


def finished_session_error(session: Session) -> ApiError | None:
    """The error `results` answers for a failed or cancelled session; None if completed."""
    if session.status is SessionStatus.FAILED:
        return ApiError(
            500, "Analysis failed", session.error or "The analysis failed", session_id=session.id
        )
    if session.status is SessionStatus.CANCELLED:
        return ApiError(
            400,
            "Session was cancelled",
            "The session was cancelled before it finished",
            session_id=session.id,
            status=session.status,
        )
    if session.status is not SessionStatus.COMPLETED:
        return results_not_ready(session)
    return None


# ---- results -> API -------------------------------------------------------------------------


def results_url(session_id: str) -> str:
    return f"{API_PREFIX}/results/{session_id}"


def thumbnail_url(session_id: str, index: int) -> str:
    return f"{results_url(session_id)}/thumbnails/{index}"


def reel_url(session_id: str) -> str:
    return f"{results_url(session_id)}/reel"


def public_results(session_id: str, results: JobResults) -> Results:
    """The worker's results as API.md shows them: artifact names become API URLs.

    A highlight's `thumbnail` ("thumbnails/000.jpg") becomes the URL of the n-th thumbnail;
    the reel's file becomes a `Reel` with its URL. `model` is reduced to its display name
    in case a worker reported a local path.
    """
    model = model_display_name(results.model)
    if isinstance(results, WorkoutResults):
        return msgspec.structs.replace(results, model=model)
    highlights = [
        msgspec.structs.replace(
            item, thumbnail=thumbnail_url(session_id, index) if item.thumbnail else None
        )
        for index, item in enumerate(results.highlights)
    ]
    reel = results.reel
    fields = msgspec.structs.asdict(results)  # shallow: the items stay as they are
    return HighlightsResults(
        **{
            **fields,
            "model": model,
            "highlights": highlights,
            "reel": Reel(url=reel_url(session_id), duration_seconds=reel.duration_seconds)
            if reel is not None
            else None,
        }
    )


def completed_results(session: Session) -> JobResults:
    """The results of a completed session; else raises the error `results` answers with."""
    error = finished_session_error(session)
    if error is not None:
        raise error
    assert session.results is not None  # a session completes only with its results
    return session.results


def thumbnail_name(results: JobResults | None, index: int) -> str | None:
    """The worker's file name of the n-th highlight's thumbnail, or None if there is none."""
    if not isinstance(results, WorkerHighlightsResults):
        return None
    if not 0 <= index < len(results.highlights):
        return None
    return results.highlights[index].thumbnail or None


def reel_name(results: JobResults | None) -> str | None:
    """The worker's file name of the highlight reel, or None when there is no reel."""
    if not isinstance(results, WorkerHighlightsResults) or results.reel is None:
        return None
    return results.reel.file
