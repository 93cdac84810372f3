"""Every route of the service, declared once: method, path, handler, and what the OpenAPI
document says of it (summary, parameters, request body, answers).

`register` puts a table on an application's router; `openapi.openapi_document` writes its
paths from the same table, the index lists it, the API-key middleware reads which routes
are public, and the tests take their route lists from it: none of them can drift from the
others (STYLE.md lesson 22; Starlette's `routes=[Route(...)]` is such a table).

Query parameters are strict: a route's declared ones are each given at most once and
never empty, else a 400 naming the parameter (checked here, before the handler, which
checks the value itself). A query parameter a route does not declare is ignored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from protocol import AnalysisType
from server.state.models import SessionStatus
from server.web import (
    app_keys,
    handlers_exports,
    handlers_legacy,
    handlers_results,
    handlers_service,
    handlers_sessions,
    handlers_tus,
)
from server.web.bodies import Endpoint
from server.web.exports import FORMATS as EXPORT_FORMATS
from server.web.handlers_sessions import MAX_LIST_LIMIT
from server.web.inputs import check_query
from server.web.openapi import (
    ACCESS_TOKEN,
    EVENT_ID,
    JSON,
    SESSION_ID,
    UNAUTHORIZED,
    UUID4_PATTERN,
    accepted,
    binary,
    events,
    json_answer,
    one_of,
    openapi_document,
    upload_body,
)
from server.web.responses import API_PREFIX
from server.web.sse import LAST_EVENT_ID_HEADER, LAST_EVENT_ID_QUERY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A path parameter matches any one segment, braces included: a malformed id must reach
# its handler to be a 400 (aiohttp's default pattern refuses braces with a 404).
_PATH_PARAMETER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Route:
    """One route: how it is reached, what answers it, and how the document describes it."""

    method: str
    path: str  # as in the document: `/api/v1/video/status/{sessionId}`
    name: str  # aiohttp's route name: the API-key middleware and the tests use it
    handler: Handler
    summary: str
    answers: Mapping[str, Any]  # the answers that are not errors, by status code
    errors: Sequence[int] = ()  # statuses answered with the JSON error body
    parameters: Sequence[Mapping[str, Any]] = ()
    request_body: Mapping[str, Any] | None = None
    public: bool = False  # answered without the API key

    @property
    def query_names(self) -> tuple[str, ...]:
        """The query parameters the route takes."""
        return tuple(p["name"] for p in self.parameters if p.get("in") == "query")

    @property
    def router_path(self) -> str:
        """The path as aiohttp matches it."""
        return _PATH_PARAMETER.sub(r"{\1:[^/]+}", self.path)

    @property
    def endpoint(self) -> Endpoint:
        """The route as the index lists it."""
        return Endpoint(method=self.method, path=self.path, summary=self.summary)


def register(app: web.Application, routes: Sequence[Route]) -> None:
    """Add `routes` to the app's router, with their OpenAPI document and index listing."""
    for route in routes:
        handler = _strict_query(route.handler, route.query_names)
        if route.method == hdrs.METH_GET:  # with HEAD, as aiohttp's add_get does
            app.router.add_get(route.router_path, handler, name=route.name)
        else:
            app.router.add_route(route.method, route.router_path, handler, name=route.name)
    app[app_keys.OPENAPI] = openapi_document(routes)
    app[app_keys.ENDPOINTS] = [route.endpoint for route in routes]


def _strict_query(handler: Handler, names: tuple[str, ...]) -> Handler:
    """`handler`, after a 400 for any of its query parameters `names` repeated or empty."""
    if not names:
        return handler

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        for name in names:
            check_query(request, name)
        return await handler(request)

    return checked


# ---- the table ---------------------------------------------------------------------------

V1 = API_PREFIX


def _status(path: str, name: str) -> Route:
    return Route(
        "GET",
        path,
        name,
        handlers_sessions.status,
        "Status of a session",
        {"200": json_answer("StatusBody")},
        (400, 404),
        [SESSION_ID],
    )


def _cleanup(path: str, name: str) -> Route:
    return Route(
        "DELETE",
        path,
        name,
        handlers_sessions.cleanup,
        "Cancel a live job, then delete the session and its files",
        {"200": json_answer("Cleanup")},
        (400, 404),
        [SESSION_ID],
    )


def _legacy(kind: AnalysisType, handler: Handler) -> Route:
    return Route(
        "POST",
        f"/analyze/{kind.value}",
        kind.value,
        handler,
        f"Upload a video and wait for its {kind.value} analysis (legacy)",
        {"200": json_answer(f"{kind.value.capitalize()}Results")},
        (400, 413, 415, 422, 500, 503),
        request_body=upload_body(with_type=False, kind=kind),
    )


SERVICE_ROUTES = [
    Route(
        "GET",
        "/",
        "index",
        handlers_service.index,
        "Service name, version and endpoints (a browser may get the live page)",
        {
            "200": {
                "description": "OK",
                "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/ServiceIndex"}},
                    "text/html": {"schema": {"type": "string"}},
                },
            }
        },
        public=True,
    ),
    Route(
        "GET",
        "/favicon.ico",
        "favicon",
        handlers_service.favicon,
        "The service's icon (SVG), for the page's browser tab",
        {"200": binary("image/svg+xml")},
        public=True,
    ),
    Route(
        "GET",
        "/static/tus.min.js",
        "tus_client",
        handlers_service.tus_client,
        "The page's resumable-upload library (tus-js-client, MIT), loaded before any key",
        {"200": binary("text/javascript")},
        public=True,
    ),
]
HEALTH = Route(
    "GET",
    "/health",
    "health",
    handlers_service.health,
    "Health, model state and job counts",
    {
        "200": json_answer("Health"),
        "503": {
            **json_answer("Health"),
            "description": "Unhealthy: the model cannot be loaded (see modelError)",
        },
    },
    public=True,
)
OPENAPI = Route(
    "GET",
    "/api/v1/openapi.json",
    "openapi",
    handlers_service.openapi,
    "This document",
    {"200": {"description": "OK", "content": {JSON: {"schema": {"type": "object"}}}}},
    public=True,
)
METRICS = Route(
    "GET",
    "/metrics",
    "metrics",
    handlers_service.metrics,
    "Prometheus metrics (text format 0.0.4); needs the API key when one is set",
    {
        "200": {
            "description": "Sessions by status, queue, running jobs, job times",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        "401": UNAUTHORIZED,
    },
)

SESSION_ROUTES = [
    Route(
        "POST",
        f"{V1}/upload",
        "upload",
        handlers_sessions.upload,
        "Upload a video; with analysis_type its analysis is queued",
        {"202": accepted()},
        (400, 413, 415, 422, 503, 507),
        request_body=upload_body(with_type=True),
    ),
    _status(f"{V1}/status/{{sessionId}}", "status"),
    _status(f"{V1}/progress/{{sessionId}}", "progress"),
    Route(
        "POST",
        f"{V1}/cancel/{{sessionId}}",
        "cancel",
        handlers_sessions.cancel,
        "Cancel a queued or running job (idempotent)",
        {"200": json_answer("SessionAnswer")},
        (400, 404, 409),
        [SESSION_ID],
    ),
    _cleanup(f"{V1}/cleanup/{{sessionId}}", "cleanup"),
    _cleanup(f"{V1}/session/{{sessionId}}", "session"),
    Route(
        "POST",
        f"{V1}/analyze/{{sessionId}}",
        "analyze",
        handlers_sessions.analyze,
        "Start the analysis of an uploaded session (two-step flow)",
        {"202": accepted()},
        (400, 404, 409, 503),
        [SESSION_ID],
        request_body={
            "required": True,
            "content": {
                JSON: {"schema": one_of("HighlightsAnalyzeRequest", "WorkoutAnalyzeRequest")},
                "application/x-www-form-urlencoded": {
                    "schema": {"$ref": "#/components/schemas/AnalyzeForm"}
                },
            },
        },
    ),
    Route(
        "GET",
        f"{V1}/events/{{sessionId}}",
        "events",
        handlers_sessions.events,
        "Server-sent events: status, partial, then completed/failed/cancelled",
        {
            "200": {
                "description": "An event stream",
                # In OpenAPI 3.1 an event stream's `schema` describes each event.
                "content": {"text/event-stream": {"schema": events()}},
            },
            "204": {"description": "The client already has the terminal event"},
        },
        (400, 404),
        [
            SESSION_ID,
            {"name": LAST_EVENT_ID_HEADER, "in": "header", "schema": EVENT_ID},
            {"name": LAST_EVENT_ID_QUERY, "in": "query", "schema": EVENT_ID},
            ACCESS_TOKEN,
        ],
    ),
    Route(
        "GET",
        f"{V1}/sessions",
        "sessions",
        handlers_sessions.list_sessions,
        "Sessions, newest first",
        {"200": json_answer("SessionList")},
        (400,),
        [
            {"name": "status", "in": "query", "schema": {"enum": [s.value for s in SessionStatus]}},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
            },
        ],
    ),
]

RESULT_ROUTES = [
    Route(
        "GET",
        f"{V1}/results/{{sessionId}}",
        "results",
        handlers_results.results,
        "Results of a completed session",
        {"200": json_answer("ResultsBody")},
        (400, 404, 500),
        [SESSION_ID],
    ),
    Route(
        "GET",
        f"{V1}/results/{{sessionId}}/reel",
        "reel",
        handlers_results.reel,
        "The highlight reel (HTTP Range supported)",
        {"200": binary("video/mp4"), "206": binary("video/mp4")},
        (400, 404, 500),
        [SESSION_ID],
    ),
    Route(
        "GET",
        f"{V1}/results/{{sessionId}}/thumbnails/{{n}}",
        "thumbnail",
        handlers_results.thumbnail,
        "Thumbnail of the n-th highlight",
        {"200": binary("image/jpeg")},
        (400, 404, 500),
        [
            SESSION_ID,
            {
                "name": "n",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            },
        ],
    ),
    Route(
        "GET",
        f"{V1}/results/{{sessionId}}/video",
        "video",
        handlers_results.video,
        "The uploaded video, in any state until cleanup (HTTP Range supported)",
        {"200": binary("video/*"), "206": binary("video/*")},
        (400, 404),
        [SESSION_ID, ACCESS_TOKEN],
    ),
    Route(
        "GET",
        f"{V1}/results/{{sessionId}}/chapters.vtt",
        "chapters",
        handlers_results.chapters,
        "WebVTT chapters from the judged segments, for <track kind=chapters>",
        {"200": {"description": "WebVTT", "content": {"text/vtt": {"schema": {"type": "string"}}}}},
        (400, 404, 500),
        [SESSION_ID, ACCESS_TOKEN],
    ),
    Route(
        "GET",
        f"{V1}/results/{{sessionId}}/export/{{format}}",
        "export",
        handlers_exports.export,
        "The highlights as an editor's timeline: OpenTimelineIO, CMX 3600 EDL or FCPXML",
        {
            "200": {
                "description": "A file of cuts from the uploaded video, at its frame rate",
                "content": {
                    export.content_type: (
                        {"schema": {"$ref": "#/components/schemas/OtioTimeline"}}
                        if export.content_type == JSON
                        else {"schema": {"type": "string"}}
                    )
                    for export in EXPORT_FORMATS.values()
                },
            }
        },
        (400, 404, 409, 500),
        [
            SESSION_ID,
            {
                "name": "format",
                "in": "path",
                "required": True,
                "schema": {"enum": list(EXPORT_FORMATS)},
            },
        ],
    ),
]

# Resumable uploads (tus 1.0.0). Their headers are the protocol's (see docs/API.md).
UPLOAD_ID = {
    "name": "uploadId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid", "pattern": UUID4_PATTERN},
}


def _tus_header(name: str, required: bool = True, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema}


TUS_RESUMABLE = _tus_header("Tus-Resumable", enum=["1.0.0"])
OFFSET_BODY = {
    "required": True,
    "content": {"application/offset+octet-stream": {"schema": {"type": "string"}}},
}
TUS_ROUTES = [
    Route(
        "OPTIONS",
        f"{V1}/uploads/",
        "tus_options",
        handlers_tus.options,
        "Resumable uploads: the tus version, extensions and size limit this server has",
        {"204": {"description": "Tus-Version, Tus-Extension, Tus-Max-Size headers"}},
    ),
    Route(
        "POST",
        f"{V1}/uploads/",
        "tus_create",
        handlers_tus.create,
        "Start a resumable upload (tus creation; with a body, creation-with-upload)",
        {"201": {"description": "Created: Location is the upload's URL"}},
        (400, 412, 413, 503),
        [
            TUS_RESUMABLE,
            _tus_header("Upload-Length", type="string", pattern=r"^[0-9]+$"),
            _tus_header("Upload-Metadata", required=False, type="string"),
        ],
    ),
    Route(
        "GET",
        f"{V1}/uploads/{{uploadId}}",
        "tus_upload",
        handlers_tus.head_or_get,
        "A resumable upload: HEAD gives Upload-Offset (where to resume), GET the same as JSON",
        {"200": json_answer("TusUploadBody")},
        (400, 404, 410, 412),
        [UPLOAD_ID],
    ),
    Route(
        "PATCH",
        f"{V1}/uploads/{{uploadId}}",
        "tus_patch",
        handlers_tus.patch,
        "Bytes of a resumable upload at Upload-Offset; the last ones make the session",
        {"204": {"description": "Kept: Upload-Offset is the new offset; Session-Id once done"}},
        (400, 404, 409, 410, 412, 413, 415, 422, 423, 503),
        [
            UPLOAD_ID,
            TUS_RESUMABLE,
            _tus_header("Upload-Offset", type="string", pattern=r"^[0-9]+$"),
        ],
        request_body=OFFSET_BODY,
    ),
    Route(
        "DELETE",
        f"{V1}/uploads/{{uploadId}}",
        "tus_delete",
        handlers_tus.terminate,
        "End a resumable upload and remove its bytes (tus termination)",
        {"204": {"description": "Gone"}},
        (400, 404, 412, 423),
        [UPLOAD_ID, TUS_RESUMABLE],
    ),
]

LEGACY_ROUTES = [
    _legacy(AnalysisType.HIGHLIGHTS, handlers_legacy.analyze_highlights),
    _legacy(AnalysisType.WORKOUT, handlers_legacy.analyze_workout),
]

# What a node serving the API answers (`NODE_ROLE` all or api).
API_ROUTES = [
    *SERVICE_ROUTES,
    HEALTH,
    OPENAPI,
    METRICS,
    *SESSION_ROUTES,
    *TUS_ROUTES,
    *RESULT_ROUTES,
    *LEGACY_ROUTES,
]
# A `worker` node runs jobs and answers only for its own health and metrics.
WORKER_ROUTES = [HEALTH, METRICS]
