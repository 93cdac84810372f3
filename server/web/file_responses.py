"""Serving a stored file: from this node's disk, from a bucket through the node, or by a
redirect to a short-lived signed URL of the bucket.

All three answer Range requests (a <video> tag seeks with them). A local file is aiohttp's
`FileResponse` (sendfile, conditional requests). An object is streamed with one ranged
GET of the store per request. With STORAGE_REDIRECT_SECONDS set, the bytes never pass
through the node: the client follows a 307 to a URL the store signed, which honours Range
itself. The API key guards the route either way; the signed URL is the capability.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from server.storage.files import SessionFiles, StoredFile
from server.web.responses import ApiError


async def serve_stored(
    request: web.Request,
    files: SessionFiles,
    location: str | None,
    *,
    content_type: str | None = None,
    redirect_seconds: int = 0,
    missing: str = "The file is missing",
    session_id: str | None = None,
) -> web.StreamResponse:
    """The file at `location` (404 with `missing` if there is none)."""
    stored = await files.stat(location) if location is not None else None
    if stored is None:
        raise ApiError(404, "Not found", missing, session_id=session_id)
    if stored.path is not None:
        headers = {hdrs.CONTENT_TYPE: content_type} if content_type else None
        return web.FileResponse(stored.path, headers=headers)
    if redirect_seconds > 0:
        url = await files.signed_url(stored.location, redirect_seconds)
        if url is not None:
            # 307: the client repeats the same method (GET or HEAD) at the signed URL.
            raise web.HTTPTemporaryRedirect(url, headers={hdrs.CACHE_CONTROL: "no-store"})
    return await _stream(request, files, stored, content_type)


async def _stream(
    request: web.Request, files: SessionFiles, stored: StoredFile, content_type: str | None
) -> web.StreamResponse:
    """The object's bytes through this node: all of them, or the one range asked for."""
    start, end = _wanted(request, stored.size)
    response = web.StreamResponse(status=200 if (start, end) == (0, stored.size) else 206)
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    response.headers[hdrs.CONTENT_TYPE] = content_type or "application/octet-stream"
    if stored.etag:
        response.headers[hdrs.ETAG] = stored.etag
    if stored.last_modified is not None:
        response.last_modified = stored.last_modified
    if response.status == 206:
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end - 1}/{stored.size}"
    response.content_length = end - start
    await response.prepare(request)
    if request.method != hdrs.METH_HEAD and end > start:
        async for chunk in files.read(stored.location, start, end):
            await response.write(chunk)
    await response.write_eof()
    return response


def _wanted(request: web.Request, size: int) -> tuple[int, int]:
    """The byte range `[start, end)` the request asks for; the whole file without Range.

    One range only (what browsers and players send); a range that starts past the end is
    a 416 that says how big the file is, as RFC 9110 has it.
    """
    if hdrs.RANGE not in request.headers:
        return 0, size
    try:
        wanted = request.http_range
    except ValueError:
        raise _unsatisfiable(
            size, "The Range header is not a single bytes=start-end range"
        ) from None
    start, stop = wanted.start, wanted.stop
    if start is None:
        return 0, size
    if start < 0:  # bytes=-N: the last N bytes
        return max(0, size + start), size
    if start >= size:
        raise _unsatisfiable(size, f"The range starts past the end ({size} bytes)")
    return start, size if stop is None else min(stop, size)


def _unsatisfiable(size: int, message: str) -> ApiError:
    return ApiError(
        416,
        "Range not satisfiable",
        message,
        headers={hdrs.CONTENT_RANGE: f"bytes */{size}"},
    )
