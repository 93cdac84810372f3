"""The synchronous endpoints older clients use: `POST /analyze/highlights` and `/analyze/workout`.

Same upload checks, job runner and limits as the v1 API; the request simply stays open
until the job ends and answers with the bare results object. A client that hangs up has
its job cancelled, since nobody is left to read the answer.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from protocol import AnalysisType
from server.state.models import SessionConflict, SessionNotFound
from server.web import app_keys as keys
from server.web.bodies import json_response, results_of
from server.web.disconnect import ClientGone, client_gone, unless_client_leaves
from server.web.handlers_sessions import upload_limits
from server.web.responses import finished_session_error, public_results
from server.web.uploads import accept_upload


async def analyze_highlights(request: web.Request) -> web.Response:
    """Upload a video and wait for its highlights (legacy, synchronous)."""
    return await _analyze_now(request, AnalysisType.HIGHLIGHTS)


async def analyze_workout(request: web.Request) -> web.Response:
    """Upload a video and wait for its workout analysis (legacy, synchronous)."""
    return await _analyze_now(request, AnalysisType.WORKOUT)


async def _analyze_now(request: web.Request, analysis_type: AnalysisType) -> web.Response:
    app = request.app
    runner = app[keys.RUNNER]
    session = await accept_upload(
        request,
        sessions=app[keys.SESSIONS],
        runner=runner,
        paths=app[keys.PATHS],
        limits=upload_limits(request),
        slots=app[keys.UPLOADS],
        probes=app[keys.PROBES],
        fixed_type=analysis_type,
    )
    try:
        session = await unless_client_leaves(
            request, runner.wait(session.id), app[keys.CONFIG].disconnect_poll_seconds
        )
    except (ClientGone, asyncio.CancelledError):
        # CancelledError too: a server run with handler_cancellation=True (as aiohttp's
        # test server is) cancels the handler itself when the client goes.
        if client_gone(request):
            with contextlib.suppress(SessionConflict, SessionNotFound):
                await runner.cancel(session.id)
        raise
    error = finished_session_error(session)
    if error is not None:
        raise error
    return json_response(results_of(public_results(session.id, session.results or {})))
