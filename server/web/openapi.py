"""The OpenAPI 3.1 description served at `/api/v1/openapi.json` (API.md in machine form).

Parameter schemas are generated from `protocol.SCHEMAS`, so they cannot drift from the
validation the server and the worker actually do.
"""

from __future__ import annotations

from typing import Any

from protocol import SCHEMAS, AnalysisType, ParamSpec
from server.config import SERVICE_NAME, VERSION
from server.state.models import SessionStatus

_V1 = "/api/v1/video"
_JSON = "application/json"
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
            "schemas": _schemas(),
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
        {"200": _json_schema({"sessionId": {"type": "string"}, "message": {"type": "string"}})},
        400,
        404,
    )
    return {
        "/": {"get": _op("Service name, version and endpoints", [], {"200": _json_any()})},
        "/health": {
            "get": _op(
                "Health, model state and job counts",
                [],
                {
                    "200": _json_any(),
                    "503": {
                        "description": "Unhealthy: the model cannot be loaded (modelError says why)",
                        "content": {_JSON: {"schema": {"type": "object"}}},
                    },
                },
            )
        },
        "/api/v1/openapi.json": {"get": _op("This document", [], {"200": _json_any()})},
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
                        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            )
        },
        f"{_V1}/upload": {
            "post": {
                **_op(
                    "Upload a video; with analysis_type its analysis is queued",
                    [],
                    {"202": _json_ref("Accepted")},
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
                {
                    "200": _json_schema(
                        {
                            "sessionId": {"type": "string"},
                            "status": {"const": "completed"},
                            "results": {"$ref": "#/components/schemas/Results"},
                        }
                    )
                },
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
            )
        },
        f"{_V1}/results/{{sessionId}}/thumbnails/{{n}}": {
            "get": _op(
                "Thumbnail of the n-th highlight",
                [
                    *sid,
                    {"name": "n", "in": "path", "required": True, "schema": {"type": "integer"}},
                ],
                {"200": _binary("image/jpeg")},
                400,
                404,
            )
        },
        f"{_V1}/cancel/{{sessionId}}": {
            "post": _op(
                "Cancel a queued or running job (idempotent)",
                sid,
                {"200": _json_ref("Accepted")},
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
                    {"202": _json_ref("Accepted")},
                    400,
                    404,
                    409,
                    503,
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {"schema": {"$ref": "#/components/schemas/AnalyzeRequest"}},
                        "application/x-www-form-urlencoded": {
                            "schema": {"$ref": "#/components/schemas/AnalyzeRequest"}
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
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    {"name": "lastEventId", "in": "query", "schema": {"type": "string"}},
                    {"name": "access_token", "in": "query", "schema": {"type": "string"}},
                ],
                {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
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
                {
                    "200": _json_schema(
                        {
                            "sessions": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/StatusBody"},
                            },
                            "count": {"type": "integer"},
                        }
                    )
                },
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


def _op(summary: str, parameters: list[Any], responses: dict[str, Any], *errors: int) -> dict:
    for code in errors:
        responses[str(code)] = {
            "description": "Error",
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    if errors:
        responses["401"] = {
            "description": "API key missing or wrong (only when API_KEY is set)",
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
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


def _json_schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": "OK",
        "content": {_JSON: {"schema": {"type": "object", "properties": properties}}},
    }


def _json_any() -> dict[str, Any]:
    return {"description": "OK", "content": {_JSON: {"schema": {"type": "object"}}}}


def _binary(media_type: str) -> dict[str, Any]:
    return {
        "description": "The file",
        "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
    }


def _upload_body(*, with_type: bool, kind: AnalysisType | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "The video (or `video`)"},
        "params": {"type": "string", "description": "Params as a JSON object, default {}"},
    }
    if with_type:
        properties["analysis_type"] = {
            "enum": [t.value for t in AnalysisType],
            "description": "Absent: two-step flow, status `uploaded`",
        }
    elif kind is not None:
        for spec in SCHEMAS[kind]:
            properties[spec.name] = {**_param_schema(spec), "description": spec.help}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": properties, "required": ["file"]}
            }
        },
    }


def _param_schema(spec: ParamSpec) -> dict[str, Any]:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    schema: dict[str, Any] = {"type": kinds[spec.kind]}
    if spec.default is not None:
        schema["default"] = spec.default
    if spec.minimum is not None:
        schema["minimum"] = spec.minimum
    if spec.maximum is not None:
        schema["maximum"] = spec.maximum
    if spec.max_length is not None:
        schema["type"] = ["string", "null"]
        schema["maxLength"] = spec.max_length
    return schema


def _params_schema(kind: AnalysisType) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            spec.name: {**_param_schema(spec), "description": spec.help} for spec in SCHEMAS[kind]
        },
    }


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    span = {
        "start": {"type": "number"},
        "end": {"type": "number"},
        "start_time": {"type": "string"},
        "end_time": {"type": "string"},
    }
    common = {
        "processing_time_seconds": {"type": "number"},
        "model": {"type": "string"},
        "video": {"$ref": "#/components/schemas/Video"},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error", "code"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "sessionId": {"type": "string"},
                "code": {"type": "integer"},
                "status": {"type": "string"},
                "progress": {"type": "number"},
            },
        },
        "Accepted": {
            "type": "object",
            "properties": {
                "sessionId": {"type": "string"},
                "status": {"enum": [s.value for s in SessionStatus]},
                "message": {"type": "string"},
            },
        },
        "StatusBody": {
            "type": "object",
            "properties": {
                "sessionId": {"type": "string"},
                "status": {"enum": [s.value for s in SessionStatus]},
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "currentStep": nullable_string,
                "analysisType": {"enum": [*(t.value for t in AnalysisType), None]},
                "createdAt": {"type": "string", "format": "date-time"},
                "updatedAt": {"type": "string", "format": "date-time"},
                "error": nullable_string,
                "queuePosition": {"type": ["integer", "null"]},
            },
        },
        "AnalyzeRequest": {
            "type": "object",
            "required": ["analysis_type"],
            "properties": {
                "analysis_type": {"enum": [t.value for t in AnalysisType]},
                "params": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/HighlightsParams"},
                        {"$ref": "#/components/schemas/WorkoutParams"},
                        {"type": "string", "description": "the same, as a JSON string"},
                    ]
                },
            },
        },
        "HighlightsParams": _params_schema(AnalysisType.HIGHLIGHTS),
        "WorkoutParams": _params_schema(AnalysisType.WORKOUT),
        "Video": {
            "type": "object",
            "properties": {
                "filename": {"type": "string"},
                "duration_seconds": {"type": "number"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "fps": {"type": "number"},
            },
        },
        "Results": {
            "oneOf": [
                {"$ref": "#/components/schemas/HighlightsResults"},
                {"$ref": "#/components/schemas/WorkoutResults"},
            ]
        },
        "HighlightsResults": {
            "type": "object",
            "properties": {
                "analysisType": {"const": "highlights"},
                **common,
                "video_description": {"type": "string"},
                "criteria": {"type": "array", "items": {"type": "string"}},
                "highlights_found": {"type": "integer"},
                "highlights": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            **span,
                            "significance": {"type": "integer"},
                            "description": {"type": "string"},
                            "thumbnail": {**nullable_string, "description": "an API URL"},
                        },
                    },
                },
                "reel": {
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {
                                "url": {"type": "string"},
                                "duration_seconds": {"type": "number"},
                            },
                        },
                        {"type": "null"},
                    ]
                },
            },
        },
        "WorkoutResults": {
            "type": "object",
            "properties": {
                "analysisType": {"const": "workout"},
                **common,
                "segments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            **span,
                            "exercise": {"type": "string"},
                            "reps": {"type": ["integer", "null"]},
                            "form_notes": {"type": "string"},
                        },
                    },
                },
                "summary": {
                    "type": "object",
                    "properties": {
                        "exercises": {"type": "array", "items": {"type": "string"}},
                        "total_reps": {"type": "integer"},
                        "active_seconds": {"type": "number"},
                    },
                },
            },
        },
    }
