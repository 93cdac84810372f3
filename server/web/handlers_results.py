"""Handlers of a session's results and files: the results body, the reel, thumbnails, the
uploaded video and the WebVTT chapters (`/api/v1/video/results/{sessionId}...`).

The results rules hold for all but the video: unknown 404, not finished 400, failed 500,
cancelled 400 (`finished_session_error`); a file named by the worker is served only from
inside the session's own output folder.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.state.models import Session
from server.web import app_keys as keys
from server.web.bodies import ResultsBody, json_response, results_of
from server.web.chapters import VTT_CONTENT_TYPE, chapters_vtt, session_chapters
from server.web.inputs import natural, session_id_of
from server.web.responses import (
    ApiError,
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
            results=results_of(public_results(session.id, session.results or {})),
        )
    )


async def reel(request: web.Request) -> web.FileResponse:
    """The highlight reel MP4 (Range requests work, so a <video> tag can seek)."""
    session = await _finished(request)
    name = reel_name(session.results)
    if name is None:
        raise ApiError(404, "No reel", "This session has no highlight reel", session_id=session.id)
    return web.FileResponse(_artifact(session, name), headers={"Content-Type": "video/mp4"})


async def thumbnail(request: web.Request) -> web.FileResponse:
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
    return web.FileResponse(_artifact(session, name), headers={"Content-Type": "image/jpeg"})


async def video(request: web.Request) -> web.FileResponse:
    """The uploaded video itself, in any state until cleanup (Range requests work)."""
    session = await request.app[keys.SESSIONS].get(session_id_of(request))
    return web.FileResponse(_upload(session))


async def chapters(request: web.Request) -> web.Response:
    """WebVTT chapters of a completed session, from its judged segments."""
    session = await _finished(request)
    found = session_chapters(session.results or {})
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


def _upload(session: Session) -> Path:
    """The session's uploaded video, while its file is there."""
    path = Path(session.upload_path)
    if not path.is_file():
        raise ApiError(404, "Not found", "The uploaded video is gone", session_id=session.id)
    return path


def _artifact(session: Session, name: str) -> Path:
    """A worker-named artifact, only if it really lies inside the session's output dir."""
    folder = Path(session.output_dir).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise ApiError(404, "Not found", "The artifact is missing", session_id=session.id)
    return path
