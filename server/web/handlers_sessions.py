"""Handlers of the v1 sessions: upload, analyze, status, cancel, cleanup, events, the list.

Thin on purpose: each reads its input, calls the sessions or the runner, and shapes the
answer. Domain errors (SessionNotFound, SessionConflict, QueueFull...) propagate and are
turned into HTTP by the `errors` middleware, in one place.
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from protocol import AnalysisType, parse_analysis_type, parse_params_json, validate_params
from server.state.models import Session, SessionConflict, SessionStatus
from server.web import app_keys as keys
from server.web.bodies import Cleanup, SessionAnswer, SessionList, json_response
from server.web.inputs import natural, session_id_of
from server.web.responses import API_PREFIX, ApiError
from server.web.sse import stream_events
from server.web.uploads import UploadLimits, accept_upload

MAX_LIST_LIMIT = 1000


def status_url(session_id: str) -> str:
    return f"{API_PREFIX}/status/{session_id}"


def accepted(session: Session, message: str) -> web.Response:
    """202 with a Location header pointing at the status URL."""
    return json_response(
        SessionAnswer(session_id=session.id, status=session.status, message=message),
        status=202,
        headers={"Location": status_url(session.id)},
    )


def upload_limits(request: web.Request) -> UploadLimits:
    config = request.app[keys.CONFIG]
    return UploadLimits(config.max_upload_bytes, config.max_video_seconds)


async def upload(request: web.Request) -> web.Response:
    """Upload a video; with `analysis_type` its analysis is queued at once."""
    app = request.app
    session = await accept_upload(
        request,
        sessions=app[keys.SESSIONS],
        runner=app[keys.RUNNER],
        paths=app[keys.PATHS],
        limits=upload_limits(request),
        slots=app[keys.UPLOADS],
        probes=app[keys.PROBES],
        webhooks=app[keys.WEBHOOKS],
    )
    if session.status is SessionStatus.UPLOADED:
        message = (
            "Video uploaded successfully; start the analysis with "
            f"POST {API_PREFIX}/analyze/{session.id}"
        )
    else:
        message = "Video uploaded successfully, processing started"
    return accepted(session, message)


async def analyze(request: web.Request) -> web.Response:
    """Start the analysis of an `uploaded` session (two-step flow)."""
    session_id = session_id_of(request)
    sessions = request.app[keys.SESSIONS]
    await sessions.get(session_id)
    analysis_type, params, webhook_url = await _analysis_request(request)
    webhook = await request.app[keys.WEBHOOKS].target(webhook_url)
    session = await request.app[keys.RUNNER].submit(session_id, analysis_type, params, webhook)
    return accepted(session, "Processing started")


async def _analysis_request(
    request: web.Request,
) -> tuple[AnalysisType, dict[str, Any], Any]:
    """`analysis_type`, validated `params` and the `webhook_url` of a JSON or form body."""
    body: dict[str, Any]
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except (ValueError, LookupError, RecursionError):
            # LookupError: a charset Python does not know; RecursionError: "[[[[..." too deep.
            raise ApiError(400, "Bad request", "The body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "Bad request", "The body must be a JSON object")
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.post()
        except (ValueError, LookupError, AssertionError, BadHttpMessage):
            # A missing boundary, a broken part header, an unknown charset: the client's doing.
            raise ApiError(
                400, "Bad request", "The form body cannot be read; send JSON or a well-formed form"
            ) from None
        body = {name: value for name, value in form.items() if isinstance(value, str)}
    else:
        body = {}
    if body.get("analysis_type") in (None, ""):
        raise ApiError(
            400,
            "Bad request",
            "analysis_type is required: highlights or workout, "
            'e.g. {"analysis_type": "highlights", "params": {}}',
        )
    analysis_type = parse_analysis_type(body["analysis_type"])
    params = body.get("params")
    if isinstance(params, str):
        params = parse_params_json(params)
    return analysis_type, validate_params(analysis_type, params), body.get("webhook_url")


async def status(request: web.Request) -> web.Response:
    """The status body of a session (also served as `progress`)."""
    sessions = request.app[keys.SESSIONS]
    session = await sessions.get(session_id_of(request))
    return web.Response(body=await sessions.body_json(session), content_type="application/json")


async def cancel(request: web.Request) -> web.Response:
    """Cancel a queued or running job; answers once its worker process is gone."""
    session = await request.app[keys.RUNNER].cancel(session_id_of(request))
    return json_response(
        SessionAnswer(
            session_id=session.id,
            status=session.status,
            message="Processing cancelled successfully",
        )
    )


async def cleanup(request: web.Request) -> web.Response:
    """Cancel a live job, then delete the session, its upload and its artifacts."""
    session_id = session_id_of(request)
    sessions = request.app[keys.SESSIONS]
    session = await sessions.get(session_id)
    if not session.status.is_terminal:
        # It may finish on its own meanwhile; deleting it is what was asked either way.
        with contextlib.suppress(SessionConflict):
            await request.app[keys.RUNNER].cancel(session_id)
    await sessions.delete(session_id)
    return json_response(Cleanup(session_id=session_id, message="Session cleaned up successfully"))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `status`, `partial`, then one terminal event."""
    session_id = session_id_of(request)
    await request.app[keys.SESSIONS].get(session_id)
    config = request.app[keys.CONFIG]
    return await stream_events(
        request,
        request.app[keys.HUB],
        session_id,
        ping_seconds=config.sse_ping_seconds,
        poll_seconds=config.disconnect_poll_seconds,
    )


async def list_sessions(request: web.Request) -> web.Response:
    """Status bodies of the sessions, newest first, optionally by `status` and `limit`."""
    # Each at most once and never empty: the route table checks that before this runs.
    status_filter = _status_filter(request.query.get("status"))
    limit = _limit(request.query.get("limit"))
    sessions = request.app[keys.SESSIONS]
    found = await sessions.list(status=status_filter, limit=limit)
    bodies = [await sessions.status_of(session) for session in found]
    return json_response(SessionList(sessions=bodies, count=len(bodies)))


def _status_filter(raw: str | None) -> SessionStatus | None:
    if raw is None:
        return None
    try:
        return SessionStatus(raw)
    except ValueError:
        allowed = ", ".join(status.value for status in SessionStatus)
        raise ApiError(400, "Bad request", f"status must be one of {allowed}") from None


def _limit(raw: str | None) -> int | None:
    if raw is None:
        return None
    limit = natural(raw)
    if limit is None or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ApiError(400, "Bad request", f"limit must be an integer from 1 to {MAX_LIST_LIMIT}")
    return limit
