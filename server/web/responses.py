"""What the HTTP edge says: JSON error bodies, domain errors as HTTP, results as API objects.

Every error the application produces goes through `error_response`, so all of them share
API.md's shape `{"error", "message", "sessionId"?, "code"}`. The results transform is a
pure function: the worker names its artifacts relative to its output dir and the client
sees API URLs instead, never a server path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from protocol import ParamsError, model_display_name
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
from server.web.bodies import ErrorBody, json_response

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


def public_results(session_id: str, results: Mapping[str, Any]) -> dict[str, Any]:
    """The worker's results as API.md shows them: artifact names become API URLs.

    A highlight's `thumbnail` ("thumbnails/000.jpg") becomes the URL of the n-th thumbnail;
    `reel` ({"file": "reel.mp4", "duration_seconds": 20.0}) becomes {"url", "duration_seconds"}.
    `model` is reduced to its display name in case a worker reported a local path.
    """
    public = dict(results)
    if isinstance(public.get("model"), str):
        public["model"] = model_display_name(public["model"])
    highlights = public.get("highlights")
    if isinstance(highlights, list):
        public["highlights"] = [
            _public_highlight(session_id, index, item) for index, item in enumerate(highlights)
        ]
    if "reel" in public:
        reel = public["reel"]
        public["reel"] = (
            {"url": reel_url(session_id), "duration_seconds": reel.get("duration_seconds")}
            if isinstance(reel, Mapping) and reel.get("file")
            else None
        )
    return public


def _public_highlight(session_id: str, index: int, item: Any) -> Any:
    if not isinstance(item, Mapping):
        return item
    public = dict(item)
    if "thumbnail" in public:
        public["thumbnail"] = thumbnail_url(session_id, index) if public["thumbnail"] else None
    return public


def thumbnail_name(results: Mapping[str, Any] | None, index: int) -> str | None:
    """The worker's file name of the n-th highlight's thumbnail, or None if there is none."""
    highlights = (results or {}).get("highlights")
    if not isinstance(highlights, list) or not 0 <= index < len(highlights):
        return None
    item = highlights[index]
    name = item.get("thumbnail") if isinstance(item, Mapping) else None
    return name if isinstance(name, str) and name else None


def reel_name(results: Mapping[str, Any] | None) -> str | None:
    """The worker's file name of the highlight reel, or None when there is no reel."""
    reel = (results or {}).get("reel")
    name = reel.get("file") if isinstance(reel, Mapping) else None
    return name if isinstance(name, str) and name else None
