"""Handlers of a session's results and files: the results body, the reel, thumbnails, the
uploaded video and the WebVTT chapters (`/api/v1/video/results/{sessionId}...`).

The results rules hold for all but the video: unknown 404, not finished 400, failed 500,
cancelled 400 (`finished_session_error`); a file named by the worker is served only from
inside the session's own artifacts. Files come from wherever the store keeps them
(`file_responses`).
"""

from __future__ import annotations

from aiohttp import web

from server.state.models import Session
from server.web import app_keys as keys
from server.web.bodies import ResultsBody, json_response
from server.web.chapters import VTT_CONTENT_TYPE, chapters_vtt, session_chapters
from server.web.file_responses import serve_stored
from server.web.inputs import natural, session_id_of
from server.web.responses import (
    ApiError,
    completed_results,
    finished_session_error,
    public_results,
    reel_name,
    thumbnail_name,
)


async def results(request: web.Request) -> web.Response:
    """The results of a completed session, artifact names turned into URLs."""
    session = await _finished(request)
    return json_response(
        ResultsBody(
            session_id=session.id,
            status="completed",
            results=public_results(session.id, completed_results(session)),
        )
    )


async def reel(request: web.Request) -> web.StreamResponse:
    """The highlight reel MP4 (Range requests work, so a <video> tag can seek)."""
    session = await _finished(request)
    name = reel_name(session.results)
    if name is None:
        raise ApiError(404, "No reel", "This session has no highlight reel", session_id=session.id)
    return await _artifact(request, session, name, "video/mp4")


async def thumbnail(request: web.Request) -> web.StreamResponse:
    """The thumbnail JPEG of the n-th highlight."""
    session = await _finished(request)
    raw = request.match_info["n"]
    index = natural(raw)
    if index is None:
        raise ApiError(
            400,
            "Bad request",
            "The thumbnail number is a highlight index: 0, 1, ...",
            session_id=session.id,
        )
    name = thumbnail_name(session.results, index)
    if name is None:
        raise ApiError(404, "No thumbnail", f"There is no thumbnail {raw}", session_id=session.id)
    return await _artifact(request, session, name, "image/jpeg")


async def video(request: web.Request) -> web.StreamResponse:
    """The uploaded video itself, in any state until cleanup (Range requests work)."""
    session = await request.app[keys.SESSIONS].get(session_id_of(request))
    return await serve_stored(
        request,
        request.app[keys.FILES],
        session.upload_path,
        redirect_seconds=request.app[keys.CONFIG].storage_redirect_seconds,
        missing="The uploaded video is gone",
        session_id=session.id,
    )


async def chapters(request: web.Request) -> web.Response:
    """WebVTT chapters of a completed session, from its judged segments."""
    session = await _finished(request)
    found = session_chapters(completed_results(session))
    if not found:
        raise ApiError(
            404, "No chapters", "These results have no judged segments", session_id=session.id
        )
    return web.Response(text=chapters_vtt(found), content_type=VTT_CONTENT_TYPE, charset="utf-8")


async def _finished(request: web.Request) -> Session:
    """The session of the path if it completed; else the error `results` answers with."""
    session = await request.app[keys.SESSIONS].get(session_id_of(request))
    error = finished_session_error(session)
    if error is not None:
        raise error
    return session


async def _artifact(
    request: web.Request, session: Session, name: str, content_type: str
) -> web.StreamResponse:
    """A worker-named artifact, only if it really lies inside the session's artifacts."""
    files = request.app[keys.FILES]
    return await serve_stored(
        request,
        files,
        files.artifact(session.output_dir, name),
        content_type=content_type,
        redirect_seconds=request.app[keys.CONFIG].storage_redirect_seconds,
        missing="The artifact is missing",
        session_id=session.id,
    )
