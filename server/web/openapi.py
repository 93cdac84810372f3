"""The OpenAPI 3.1 description served at `/api/v1/openapi.json` (API.md in machine form).

Every schema under `components/schemas` is generated from the bodies the handlers build
(`server/web/bodies.py`), and the params of the multipart forms from `protocol.SCHEMAS`,
so neither can drift from what the server sends and checks. The paths are written here:
which route answers which body, with which status codes and headers.
"""

from __future__ import annotations

from typing import Any

from protocol import AnalysisType
from server.state.events import STATUS_EVENT_NAME, TERMINAL_EVENT_NAMES
from server.state.models import SessionStatus
from server.version import SERVICE_NAME, VERSION
from server.web.bodies import component_schemas
from server.web.exports import FORMATS as EXPORT_FORMATS

_V1 = "/api/v1/video"
_JSON = "application/json"
# A Last-Event-ID the server takes: a non-negative integer (spaces around are ignored).
_EVENT_ID = {"type": "string", "pattern": "^ *[0-9]{1,18} *$"}
_RETRY_AFTER = {
    "required": True,
    "description": "Seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 1},
}
_UUID4 = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document as a JSON-ready dict."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": SERVICE_NAME,
            "version": VERSION,
            "description": "Asynchronous video analysis (highlights, workouts) with SmolVLM2.",
        },
        "paths": _paths(),
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Only when the server sets API_KEY.",
                }
            },
            "parameters": {
                "sessionId": {
                    "name": "sessionId",
                    "in": "path",
                    "required": True,
                    # Only UUID4s are ids (any other string is a 400): version 4, RFC variant.
                    "schema": {"type": "string", "format": "uuid", "pattern": _UUID4},
                }
            },
        },
        "security": [{"bearer": []}, {}],
    }


def _paths() -> dict[str, Any]:
    sid = [{"$ref": "#/components/parameters/sessionId"}]
    status_op = _op("Status of a session", sid, {"200": _json_ref("StatusBody")}, 400, 404)
    cleanup_op = _op(
        "Cancel a live job, then delete the session and its files",
        sid,
        {"200": _json_ref("Cleanup")},
        400,
        404,
    )
    return {
        "/": {
            "get": _op(
                "Service name, version and endpoints (a browser may get the live page)",
                [],
                {
                    "200": {
                        "description": "OK",
                        "content": {
                            _JSON: {"schema": {"$ref": "#/components/schemas/ServiceIndex"}},
                            "text/html": {"schema": {"type": "string"}},
                        },
                    }
                },
            )
        },
        "/health": {
            "get": _op(
                "Health, model state and job counts",
                [],
                {
                    "200": _json_ref("Health"),
                    "503": {
                        **_json_ref("Health"),
                        "description": "Unhealthy: the model cannot be loaded (see modelError)",
                    },
                },
            )
        },
        "/api/v1/openapi.json": {
            "get": _op(
                "This document",
                [],
                {"200": {"description": "OK", "content": {_JSON: {"schema": {"type": "object"}}}}},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text format 0.0.4); needs the API key when one is set",
                [],
                {
                    "200": {
                        "description": "Sessions by status, queue, running jobs, job times",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": {
                        "description": "API key missing or wrong (only when API_KEY is set)",
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    },
                },
            )
        },
        f"{_V1}/upload": {
            "post": {
                **_op(
                    "Upload a video; with analysis_type its analysis is queued",
                    [],
                    {"202": _accepted()},
                    400,
                    413,
                    415,
                    422,
                    503,
                    507,
                ),
                "requestBody": _upload_body(with_type=True),
            }
        },
        f"{_V1}/status/{{sessionId}}": {"get": status_op},
        f"{_V1}/progress/{{sessionId}}": {"get": status_op},
        f"{_V1}/results/{{sessionId}}": {
            "get": _op(
                "Results of a completed session",
                sid,
                {"200": _json_ref("ResultsBody")},
                400,
                404,
                500,
            )
        },
        f"{_V1}/results/{{sessionId}}/reel": {
            "get": _op(
                "The highlight reel (HTTP Range supported)",
                sid,
                {
                    "200": _binary("video/mp4"),
                    "206": _binary("video/mp4"),
                },
                400,
                404,
                500,
            )
        },
        f"{_V1}/results/{{sessionId}}/thumbnails/{{n}}": {
            "get": _op(
                "Thumbnail of the n-th highlight",
                [
                    *sid,
                    {
                        "name": "n",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                {"200": _binary("image/jpeg")},
                400,
                404,
                500,
            )
        },
        f"{_V1}/results/{{sessionId}}/video": {
            "get": _op(
                "The uploaded video, in any state until cleanup (HTTP Range supported)",
                [*sid, _ACCESS_TOKEN],
                {
                    "200": _binary("video/*"),
                    "206": _binary("video/*"),
                },
                400,
                404,
            )
        },
        f"{_V1}/results/{{sessionId}}/chapters.vtt": {
            "get": _op(
                "WebVTT chapters from the judged segments, for <track kind=chapters>",
                [*sid, _ACCESS_TOKEN],
                {
                    "200": {
                        "description": "WebVTT",
                        "content": {"text/vtt": {"schema": {"type": "string"}}},
                    }
                },
                400,
                404,
                500,
            )
        },
        f"{_V1}/results/{{sessionId}}/export/{{format}}": {
            "get": _op(
                "The highlights as an editor's timeline: OpenTimelineIO, CMX 3600 EDL or FCPXML",
                [
                    *sid,
                    {
                        "name": "format",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": list(EXPORT_FORMATS)},
                    },
                ],
                {
                    "200": {
                        "description": "A file of cuts from the uploaded video, at its frame rate",
                        "content": {
                            export.content_type: (
                                {"schema": {"$ref": "#/components/schemas/OtioTimeline"}}
                                if export.content_type == _JSON
                                else {"schema": {"type": "string"}}
                            )
                            for export in EXPORT_FORMATS.values()
                        },
                    }
                },
                400,
                404,
                409,
                500,
            )
        },
        f"{_V1}/cancel/{{sessionId}}": {
            "post": _op(
                "Cancel a queued or running job (idempotent)",
                sid,
                {"200": _json_ref("SessionAnswer")},
                400,
                404,
                409,
            )
        },
        f"{_V1}/cleanup/{{sessionId}}": {"delete": cleanup_op},
        f"{_V1}/session/{{sessionId}}": {"delete": cleanup_op},
        f"{_V1}/analyze/{{sessionId}}": {
            "post": {
                **_op(
                    "Start the analysis of an uploaded session (two-step flow)",
                    sid,
                    {"202": _accepted()},
                    400,
                    404,
                    409,
                    503,
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": _one_of("HighlightsAnalyzeRequest", "WorkoutAnalyzeRequest")
                        },
                        "application/x-www-form-urlencoded": {
                            "schema": {"$ref": "#/components/schemas/AnalyzeForm"}
                        },
                    },
                },
            }
        },
        f"{_V1}/events/{{sessionId}}": {
            "get": _op(
                "Server-sent events: status, partial, then completed/failed/cancelled",
                [
                    *sid,
                    {"name": "Last-Event-ID", "in": "header", "schema": _EVENT_ID},
                    {"name": "lastEventId", "in": "query", "schema": _EVENT_ID},
                    _ACCESS_TOKEN,
                ],
                {
                    "200": {
                        "description": "An event stream",
                        # In OpenAPI 3.1 an event stream's `schema` describes each event.
                        "content": {"text/event-stream": {"schema": _events()}},
                    },
                    "204": {"description": "The client already has the terminal event"},
                },
                400,
                404,
            )
        },
        f"{_V1}/sessions": {
            "get": _op(
                "Sessions, newest first",
                [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"enum": [s.value for s in SessionStatus]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                {"200": _json_ref("SessionList")},
                400,
            )
        },
        **{
            f"/analyze/{kind.value}": {
                "post": {
                    **_op(
                        f"Upload a video and wait for its {kind.value} analysis (legacy)",
                        [],
                        {"200": _json_ref(f"{kind.value.capitalize()}Results")},
                        400,
                        413,
                        415,
                        422,
                        500,
                        503,
                    ),
                    "requestBody": _upload_body(with_type=False, kind=kind),
                }
            }
            for kind in AnalysisType
        },
    }


# Where EventSource, <video> and <track> (which cannot send headers) put the API key.
_ACCESS_TOKEN = {"name": "access_token", "in": "query", "schema": {"type": "string"}}


def _op(summary: str, parameters: list[Any], responses: dict[str, Any], *errors: int) -> dict:
    for code in errors:
        responses[str(code)] = {
            "description": "Error",
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        if code == 503:
            responses["503"]["headers"] = {"Retry-After": _RETRY_AFTER}
    if errors:
        responses["401"] = {
            "description": "API key missing or wrong (only when API_KEY is set)",
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return operation


def _json_ref(name: str) -> dict[str, Any]:
    return {
        "description": "OK",
        "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


def _accepted() -> dict[str, Any]:
    """202 with the session's status and the status URL in `Location`."""
    return {
        **_json_ref("SessionAnswer"),
        "description": "Accepted",
        "headers": {
            "Location": {
                "required": True,
                "description": "The status URL of the session",
                "schema": {"type": "string"},
            }
        },
    }


def _events() -> dict[str, Any]:
    """One server-sent event: its name, its id in the session's log and its JSON data."""

    def event(names: list[str], data: str) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["event", "id", "data"],
            "properties": {
                "event": {"enum": names},
                "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                "data": {
                    "type": "string",
                    "contentMediaType": _JSON,
                    "contentSchema": {"$ref": f"#/components/schemas/{data}"},
                },
            },
        }

    status_names = [STATUS_EVENT_NAME, *sorted(TERMINAL_EVENT_NAMES)]
    return {"oneOf": [event(status_names, "StatusBody"), event(["partial"], "PartialData")]}


def _one_of(*names: str) -> dict[str, Any]:
    return {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in names]}


def _binary(media_type: str) -> dict[str, Any]:
    return {
        "description": "The file",
        "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
    }


def _upload_body(*, with_type: bool, kind: AnalysisType | None = None) -> dict[str, Any]:
    """The multipart form of an upload; the params' own fields come from their declaration."""
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "The video (or `video`)"},
        "params": {
            "type": "string",
            "contentMediaType": _JSON,
            "description": "Params as one JSON object; absent or empty means {}",
        },
    }
    schema: dict[str, Any] = {"type": "object", "required": ["file"]}
    if with_type:
        properties["analysis_type"] = {
            "enum": [t.value for t in AnalysisType],
            "description": "Absent: two-step flow, status `uploaded` (then no params either)",
        }
        # Declared once, with the analyze request's fields.
        properties["webhook_url"] = component_schemas()["AnalyzeForm"]["properties"]["webhook_url"]
    elif kind is not None:
        declared = component_schemas()[f"{kind.value.capitalize()}Params"]["properties"]
        properties.update(declared)
        # Params come as one `params` JSON field or as individual fields, never both; an
        # empty `params` field is the same as none.
        schema["not"] = {
            "anyOf": [{"required": ["params", name]} for name in declared],
            "properties": {"params": {"pattern": "\\S"}},
        }
    schema["properties"] = properties
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
