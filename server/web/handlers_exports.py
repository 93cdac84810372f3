"""`GET /api/v1/video/results/{sessionId}/export/{format}`: the highlights for an editor.

The session rules are those of `results` (unknown 404, not finished 400, failed 500,
cancelled 400); then a format outside `FORMATS` is a 400 naming the allowed ones, a session
without highlights a 404, and a rate the format cannot hold (an EDL of a 10 fps video) a
409: the request is fine, the session's video is what the format cannot represent.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web

from server.web import app_keys as keys
from server.web.exports import FORMATS, ExportRefused, NoCuts, download_name, export_text
from server.web.inputs import session_id_of
from server.web.responses import ApiError, finished_session_error


async def export(request: web.Request) -> web.Response:
    """The completed session's highlights as an OTIO, EDL or FCPXML file (an attachment)."""
    session = await request.app[keys.SESSIONS].get(session_id_of(request))
    error = finished_session_error(session)
    if error is not None:
        raise error
    raw = request.match_info["format"]
    export_format = FORMATS.get(raw)
    if export_format is None:
        raise ApiError(
            400,
            "Unknown export format",
            f"Export formats are {', '.join(FORMATS)}; got {raw!r}",
            session_id=session.id,
        )
    highlights = (session.results or {}).get("highlights")
    try:
        if not isinstance(highlights, list):
            raise NoCuts()
        # In a thread: the adapters are plain Python over the whole timeline.
        text = await asyncio.to_thread(
            export_text, export_format, session.video, highlights, session_id=session.id
        )
    except NoCuts as exc:
        raise ApiError(404, "No highlights", str(exc), session_id=session.id) from None
    except ExportRefused as exc:
        raise ApiError(
            409, "Format cannot hold this video", str(exc), session_id=session.id
        ) from None
    return web.Response(
        text=text,
        content_type=export_format.content_type,
        headers={
            "Content-Disposition": _attachment(download_name(session.video.filename, export_format))
        },
    )


def _attachment(filename: str) -> str:
    """RFC 6266: an ASCII fallback name, and the real one percent-encoded as UTF-8."""
    fallback = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_" for ch in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
