"""Test files served over HTTP on 127.0.0.1, the way a bucket serves objects to a presigned URL.

aiohttp's static route answers Range requests as S3 does. The server records each request's
path and Range header, and can be told to refuse every request after the first few with 403,
as a store does once a URL's signature has expired.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

# What a presigned URL carries after the path; a test checks that it never shows in messages.
SIGNATURE_QUERY = "X-Amz-Expires=600&X-Amz-Signature=0123456789abcdef"


@dataclass
class FileServer:
    """The serving side: its address, and what it was asked."""

    server: TestServer
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    # Requests answered before every later one gets 403; None: answer them all.
    expires_after: int | None = None

    def url(self, name: str) -> str:
        """A presigned-looking URL of the file `name` in the served directory."""
        return f"{self.server.make_url('/' + name)}?{SIGNATURE_QUERY}"


async def serve_files(aiohttp_server, directory: Path) -> FileServer:
    """Serve `directory` on a free port of 127.0.0.1 until the test ends."""
    served: FileServer

    @web.middleware
    async def record(request: web.Request, handler):
        served.requests.append((request.path, request.headers.get("Range")))
        limit = served.expires_after
        if limit is not None and len(served.requests) > limit:
            return web.Response(status=403, text="Request has expired")
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_static("/", directory)
    served = FileServer(await aiohttp_server(app, host="127.0.0.1"))
    return served


def refused_url() -> str:
    """An http URL on a port of 127.0.0.1 where nothing listens: connecting is refused."""
    # Bound and closed again: the port was free a moment ago and nothing listens on it now.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    return f"http://127.0.0.1:{port}/upload.mp4?{SIGNATURE_QUERY}"
