"""Handlers of the resumable uploads (`/api/v1/video/uploads/...`): each hands the request
to the node's `TusUploads` (server/web/tus.py), which speaks the protocol."""

from __future__ import annotations

from aiohttp import hdrs, web

from server.web import app_keys as keys


async def options(request: web.Request) -> web.StreamResponse:
    """What this tus server supports."""
    return await request.app[keys.TUS].options(request)


async def create(request: web.Request) -> web.StreamResponse:
    """A new upload (and, with a body, its first bytes)."""
    return await request.app[keys.TUS].create(request)


async def head_or_get(request: web.Request) -> web.StreamResponse:
    """HEAD: the tus offset headers; GET: the same as JSON."""
    tus = request.app[keys.TUS]
    if request.method == hdrs.METH_HEAD:
        return await tus.head(request)
    return await tus.describe(request)


async def patch(request: web.Request) -> web.StreamResponse:
    """Bytes at an offset; the last ones make the session."""
    return await request.app[keys.TUS].patch(request)


async def terminate(request: web.Request) -> web.StreamResponse:
    """The upload and its bytes go."""
    return await request.app[keys.TUS].terminate(request)
