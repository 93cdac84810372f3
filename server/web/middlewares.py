"""The edge every request passes: errors as JSON, CORS, and the optional API key.

Order matters: `errors` is outermost so even a 401 or a router 404/405 leaves as JSON;
CORS headers are added in `on_response_prepare`, which also reaches error responses and
streamed ones (SSE, files) whose headers go out before a middleware would see them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from server.web.disconnect import client_gone
from server.web.inputs import ACCESS_TOKEN_QUERY
from server.web.responses import api_error_for, error_response
from server.web.routes import API_ROUTES
from server.web.tus import REQUEST_HEADERS, RESPONSE_HEADERS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths a monitor or a browser may read without the API key (API.md, API_KEY).
PUBLIC_PATHS = frozenset(route.path for route in API_ROUTES if route.public)
# Routes that EventSource, <video> and <track> reach: they cannot send headers, so the
# key may come as a query (the routes that declare it).
TOKEN_QUERY_ROUTES = frozenset(
    route.name for route in API_ROUTES if ACCESS_TOKEN_QUERY in route.query_names
)

ALLOWED_METHODS = "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
# Browsers may send and read the resumable upload's (tus) headers too.
ALLOWED_HEADERS = ", ".join(("Authorization", "Content-Type", "Last-Event-ID", *REQUEST_HEADERS))
EXPOSED_HEADERS = ", ".join(("Location", "Retry-After", *RESPONSE_HEADERS))
# Browsers cache a preflight at most this long anyway (Chromium caps at 2 hours).
PREFLIGHT_MAX_AGE_SECONDS = 7200
# nginx's status for a request whose client left before the answer (never sent to anyone).
CLIENT_CLOSED_REQUEST = 499


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error the application produces becomes API.md's JSON error body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers: dict[str, str] = {
            name: exc.headers[name]
            for name in (hdrs.ALLOW, hdrs.RETRY_AFTER, hdrs.WWW_AUTHENTICATE)
            if name in exc.headers
        }
        return error_response(exc.status, exc.reason, _http_message(request, exc), headers=headers)
    except asyncio.CancelledError:
        # The server is stopping (or a test server cancels on disconnect): nobody to answer.
        raise
    except ConnectionError:
        if not client_gone(request):
            raise
        # The client went away mid-request (an upload cut off, a legacy caller hanging up).
        # Raised on, aiohttp would log a traceback and a 500 for it; this answer, like
        # nginx's 499, reaches nobody and only tells the access log what happened.
        log.info("%s %s: the client went away before its answer", request.method, request.path)
        return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")
    except Exception as exc:
        api_error = api_error_for(exc)
        if api_error is not None:
            return api_error.response()
        log.exception("Unexpected error in %s %s", request.method, request.path)
        return error_response(
            500, "Internal server error", "Something went wrong on the server; it was logged"
        )


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"No endpoint at {request.path}"
    if exc.status == 405:
        return f"{request.method} is not allowed here; use {exc.headers.get(hdrs.ALLOW, '')}"
    if exc.status == 413:
        return "The request body is too large"
    return exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason


class Cors:
    """CORS for a fixed list of origins ("*" allows any): preflights and response headers."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and ("*" in self.origins or origin in self.origins)

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer a CORS preflight here, before routing (no route has OPTIONS) and auth."""
        if not is_preflight(request):
            return await handler(request)
        origin = request.headers.get(hdrs.ORIGIN)
        if not self.allows(origin):
            return error_response(403, "Forbidden", f"Origin {origin} is not allowed")
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: str(PREFLIGHT_MAX_AGE_SECONDS),
            },
        )

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Let an allowed origin read every response, errors and streams included."""
        origin = request.headers.get(hdrs.ORIGIN)
        if self.origins:
            response.headers.add(hdrs.VARY, hdrs.ORIGIN)
        if self.allows(origin):
            assert origin is not None
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS


def is_preflight(request: web.Request) -> bool:
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def api_key_middleware(
    api_key: str,
) -> Middleware:
    """Require `Authorization: Bearer <api_key>` everywhere but PUBLIC_PATHS and preflights."""
    expected = api_key.encode()

    @web.middleware
    async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or is_preflight(request):
            return await handler(request)
        if hmac.compare_digest(_presented_key(request), expected):
            return await handler(request)
        return error_response(
            401,
            "Unauthorized",
            "Send the API key as `Authorization: Bearer <key>`",
            headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
        )

    return require_api_key


def _presented_key(request: web.Request) -> bytes:
    scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        token = credentials.strip()
    elif request.match_info.route.name in TOKEN_QUERY_ROUTES:
        token = request.query.get(ACCESS_TOKEN_QUERY, "")
    else:
        token = ""
    # Header text may carry undecodable bytes as surrogates; keep them comparable.
    return token.encode("utf-8", "surrogatepass")
