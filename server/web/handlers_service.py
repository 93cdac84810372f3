"""Handlers about the service itself: the index (and page), its icon, health, metrics and
the OpenAPI description."""

from __future__ import annotations

from pathlib import Path

from aiohttp import hdrs, web

from protocol import model_display_name
from server.version import SERVICE_NAME, VERSION
from server.web import app_keys as keys
from server.web.bodies import Health, ServiceIndex, json_response
from server.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

STATIC = Path(__file__).resolve().parent / "static"
PAGE = STATIC / "index.html"
FAVICON = STATIC / "favicon.svg"
TUS_CLIENT = STATIC / "tus.min.js"
# Served at /favicon.ico, so the type cannot come from the name; it changes only with a
# release, so a day of caching spares a request per page view.
_FAVICON_HEADERS = {hdrs.CONTENT_TYPE: "image/svg+xml", hdrs.CACHE_CONTROL: "max-age=86400"}
# The same URL answers JSON or the page, so caches must key on Accept; and a browser
# should revalidate the page (cheap: FileResponse sends an ETag) to see a new version.
# The vendored tus-js-client changes only with a release too; the page loads it by path.
_SCRIPT_HEADERS = {hdrs.CONTENT_TYPE: "text/javascript", hdrs.CACHE_CONTROL: "max-age=86400"}
_INDEX_HEADERS: dict[str, str] = {hdrs.VARY: hdrs.ACCEPT}
_PAGE_HEADERS = {**_INDEX_HEADERS, hdrs.CACHE_CONTROL: "no-cache"}


async def index(request: web.Request) -> web.StreamResponse:
    """The service's name, version and endpoints (a browser gets the live page instead)."""
    if prefers_html(request.headers.get(hdrs.ACCEPT, "")):
        return web.FileResponse(PAGE, headers=_PAGE_HEADERS)
    return json_response(
        ServiceIndex(
            service=SERVICE_NAME,
            version=VERSION,
            openapi="/api/v1/openapi.json",
            endpoints=request.app[keys.ENDPOINTS],
        ),
        headers=_INDEX_HEADERS,
    )


def prefers_html(accept: str) -> bool:
    """Whether an Accept header ranks text/html strictly above application/json.

    Browsers send `text/html,...,*/*;q=0.8`; API clients send nothing, `*/*` or JSON, and a
    tie keeps the JSON the contract promises.
    """
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def _quality(accept: str, media_type: str) -> float:
    """The q value Accept gives `media_type`: the most specific matching range decides."""
    family = media_type.split("/")[0] + "/*"
    specificity = {media_type: 2, family: 1, "*/*": 0}
    best, best_rank = 0.0, -1
    for media_range in accept.split(","):
        name, *parameters = (part.strip() for part in media_range.split(";"))
        rank = specificity.get(name.lower(), -1)
        if rank <= best_rank:
            continue
        best, best_rank = _q(parameters), rank
    return best


def _q(parameters: list[str]) -> float:
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0  # a weight that is not a number: treat as "not acceptable"
    return 1.0


async def health(request: web.Request) -> web.Response:
    """Liveness, the model served and its state, and how many jobs run and wait.

    A 503 `unhealthy` when the model cannot be loaded: every job would fail, so a load
    balancer or orchestrator should take this node out.
    """
    runner = request.app[keys.RUNNER]
    model = runner.model_health
    return json_response(
        Health(
            status="unhealthy" if model.unavailable else "healthy",
            model=model_display_name(request.app[keys.CONFIG].model),
            model_state=model.state,
            model_error=model.reason,
            running=runner.running_count,
            queued=await runner.queue_depth(),
            version=VERSION,
        ),
        status=503 if model.unavailable else 200,
    )


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API (made from the route table)."""
    return web.json_response(request.app[keys.OPENAPI])


async def favicon(request: web.Request) -> web.FileResponse:
    """The service's icon, an SVG (browsers ask for /favicon.ico whatever the page links)."""
    return web.FileResponse(FAVICON, headers=_FAVICON_HEADERS)


async def tus_client(request: web.Request) -> web.FileResponse:
    """tus-js-client (vendored), with which the page sends uploads that survive a lost link."""
    return web.FileResponse(TUS_CLIENT, headers=_SCRIPT_HEADERS)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: sessions by status, queue, running jobs, job times, upload bytes."""
    app = request.app
    body = await app[keys.METRICS].render(app[keys.SESSIONS], app[keys.RUNNER])
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
