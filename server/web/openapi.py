"""The OpenAPI 3.1 description served at `/api/v1/openapi.json` (API.md in machine form).

Every schema under `components/schemas` is generated from the bodies the handlers build
(`server/web/bodies.py`), and the params of the multipart forms from `protocol.SCHEMAS`,
so neither can drift from what the server sends and checks. The paths are written from
the route table (`server/web/routes.py`), which declares each route's summary, parameters,
request body and answers with the helpers below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from protocol import AnalysisType
from server.state.events import STATUS_EVENT_NAME, TERMINAL_EVENT_NAMES
from server.version import SERVICE_NAME, VERSION
from server.web.bodies import component_schemas
from server.web.inputs import ACCESS_TOKEN_QUERY
from server.web.sse import EVENT_ID_PATTERN

JSON = "application/json"
_RETRY_AFTER = {
    "required": True,
    "description": "Seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 1},
}
UUID4_PATTERN = (
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)
_ERROR_BODY = {JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}

# The path parameter of every session route (declared once under components/parameters).
SESSION_ID = {"$ref": "#/components/parameters/sessionId"}
# A Last-Event-ID the server takes: a non-negative integer (spaces around are ignored).
EVENT_ID = {"type": "string", "pattern": EVENT_ID_PATTERN}
# Where EventSource, <video> and <track> (which cannot send headers) put the API key; like
# every query parameter, given once and never empty.
ACCESS_TOKEN = {
    "name": ACCESS_TOKEN_QUERY,
    "in": "query",
    "schema": {"type": "string", "minLength": 1},
}
UNAUTHORIZED = {
    "description": "API key missing or wrong (only when API_KEY is set)",
    "content": _ERROR_BODY,
}


class DescribedRoute(Protocol):
    """What the document needs to know of a route (`routes.Route` is one)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def parameters(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def answers(self) -> Mapping[str, Any]: ...
    @property
    def errors(self) -> Sequence[int]: ...
    @property
    def request_body(self) -> Mapping[str, Any] | None: ...


def openapi_document(routes: Iterable[DescribedRoute]) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of `routes` as a JSON-ready dict."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": SERVICE_NAME,
            "version": VERSION,
            "description": "Asynchronous video analysis (highlights, workouts) with SmolVLM2.",
        },
        "paths": paths,
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
                    "schema": {"type": "string", "format": "uuid", "pattern": UUID4_PATTERN},
                }
            },
        },
        "security": [{"bearer": []}, {}],
    }


def _operation(route: DescribedRoute) -> dict[str, Any]:
    """The route's answers, then each error status with the JSON error body (and a 401
    wherever an error can happen: the API key is checked before anything else)."""
    responses = dict(route.answers)
    for code in route.errors:
        responses[str(code)] = {"description": "Error", "content": _ERROR_BODY}
        if code == 503:
            responses["503"]["headers"] = {"Retry-After": _RETRY_AFTER}
    if route.errors:
        responses["401"] = UNAUTHORIZED
    operation: dict[str, Any] = {"summary": route.summary, "responses": responses}
    if route.parameters:
        operation["parameters"] = list(route.parameters)
    if route.request_body is not None:
        operation["requestBody"] = route.request_body
    return operation


def json_answer(name: str) -> dict[str, Any]:
    """An OK answer whose JSON body is the component schema `name`."""
    return {
        "description": "OK",
        "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


def accepted() -> dict[str, Any]:
    """202 with the session's status and the status URL in `Location`."""
    return {
        **json_answer("SessionAnswer"),
        "description": "Accepted",
        "headers": {
            "Location": {
                "required": True,
                "description": "The status URL of the session",
                "schema": {"type": "string"},
            }
        },
    }


def events() -> dict[str, Any]:
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
                    "contentMediaType": JSON,
                    "contentSchema": {"$ref": f"#/components/schemas/{data}"},
                },
            },
        }

    status_names = [STATUS_EVENT_NAME, *sorted(TERMINAL_EVENT_NAMES)]
    return {"oneOf": [event(status_names, "StatusBody"), event(["partial"], "PartialData")]}


def one_of(*names: str) -> dict[str, Any]:
    """A schema that is exactly one of the named component schemas."""
    return {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in names]}


def binary(media_type: str) -> dict[str, Any]:
    """A file answer of `media_type`."""
    return {
        "description": "The file",
        "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
    }


def upload_body(*, with_type: bool, kind: AnalysisType | None = None) -> dict[str, Any]:
    """The multipart form of an upload; the params' own fields come from their declaration."""
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "The video (or `video`)"},
        "params": {
            "type": "string",
            "contentMediaType": JSON,
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
