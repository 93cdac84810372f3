"""Every JSON body the HTTP API sends, declared once as a `msgspec.Struct`, and the
analyze request bodies it takes (those only describe: the checks and their messages stay
in `protocol.params`, shared with the worker).

The handlers build these classes and send them with `json_response`; the OpenAPI
document's component schemas are generated from them (`component_schemas`), so the
contract a client reads cannot drift from what the code sends. msgspec rather than
pydantic: it encodes faster than `json.dumps` (status polls are most of the traffic)
and writes the JSON Schema (OpenAPI 3.1 is JSON Schema 2020-12) of the same classes.

How to add a body (or a field):
  1. Declare a `msgspec.Struct` here (or, if the state layer builds it, in
     `server/state/bodies.py`, imported below). Wire names are the class's field names;
     `rename="camel"` for camelCase bodies, `msgspec.field(name=...)` for one odd name.
     A field a client may not get has a default, and `omit_defaults=True` leaves it out.
  2. Add the class to `DECLARED`: its schema (and those of the classes it uses) then
     appear under `components/schemas` of `/api/v1/openapi.json`, named after the class.
  3. Build it in the handler and answer with `json_response(body)`; in `openapi.py`
     point the route's response at `#/components/schemas/<ClassName>`.
Results are declared in `protocol.results` (the worker builds them, the runner checks them);
the API's highlights results differ only in naming the reel by URL (below).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from protocol import (
    SCHEMAS,
    AnalysisType,
    HighlightFound,
    HighlightsResultsOf,
    ParamSpec,
    TimelineEntry,
    WorkoutResults,
    WorkoutSegment,
)
from server.jobs.model_health import ModelStateName
from server.state.bodies import SCHEMA_REF, PartialData, StatusBody
from server.state.models import SessionStatus

_JSON = "application/json"


# ---- errors -----------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """API.md's error shape; `sessionId`, `status` and `progress` only when they apply."""

    error: str
    message: str
    session_id: str | None = None
    status: SessionStatus | None = None
    progress: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    code: Annotated[int, msgspec.Meta(ge=400, le=599)]


# ---- sessions ---------------------------------------------------------------------------


class SessionAnswer(msgspec.Struct, rename="camel"):
    """The answer of upload and analyze (202) and of cancel (200): the session and its status."""

    session_id: str
    status: SessionStatus
    message: str


class TusUploadBody(msgspec.Struct, rename="camel"):
    """A resumable upload (`GET /api/v1/video/uploads/{uploadId}`): how far it got, and
    the session it became once whole (null until then)."""

    upload_id: str
    offset: int
    length: int
    expires_at: datetime
    session_id: str | None


class Cleanup(msgspec.Struct, rename="camel"):
    """The answer of cleanup: the session and everything it left are gone."""

    session_id: str
    message: str


class SessionList(msgspec.Struct):
    """Status bodies of sessions, newest first."""

    sessions: list[StatusBody]
    count: int


# ---- results ----------------------------------------------------------------------------
# Declared once in `protocol.results`, where the worker builds them. Only the reel differs
# here: the API names it by URL, so the API's highlights results are the same declaration
# with a `Reel` (`responses.public_results` makes them from the worker's).


class Reel(msgspec.Struct, frozen=True):
    """The highlight reel: its API URL and length."""

    url: str
    duration_seconds: float


class HighlightsResults(HighlightsResultsOf[Reel], frozen=True, tag="highlights"):
    """Results of a highlights analysis (API.md, Results); thumbnails and reel as API URLs."""


Results = HighlightsResults | WorkoutResults


class ResultsBody(msgspec.Struct, rename="camel"):
    """The results of a completed session (API.md §3)."""

    session_id: str
    status: Literal["completed"]
    results: Results


# ---- exports ----------------------------------------------------------------------------


class OtioTimeline(msgspec.Struct):
    """The `otio` export: an OpenTimelineIO timeline as its `otio_json` adapter writes it.

    Only the top level is described here; everything inside follows OpenTimelineIO's own
    schemas (`OTIO_SCHEMA` names each object's), which the adapter writes, not this server.
    """

    OTIO_SCHEMA: Literal["Timeline.1"]
    name: str
    global_start_time: dict[str, Any] | None
    tracks: Annotated[dict[str, Any], msgspec.Meta(description="a Stack of one video Track")]
    metadata: dict[str, Any]


# ---- the service ------------------------------------------------------------------------


class Health(msgspec.Struct, rename="camel"):
    """Liveness, the model served and its state, and how many jobs run and wait.

    `unhealthy` (a 503) when the model cannot be loaded; `model_error` says why.
    """

    status: Literal["healthy", "unhealthy"]
    model: str
    model_state: ModelStateName
    model_error: str | None
    running: int
    queued: int
    version: str


class Endpoint(msgspec.Struct):
    """One route: its method, path pattern and summary."""

    method: str
    path: str
    summary: str


class ServiceIndex(msgspec.Struct):
    """The service's name, version, where its OpenAPI document is, and its routes."""

    service: str
    version: str
    openapi: str
    endpoints: list[Endpoint]


# ---- requests ---------------------------------------------------------------------------


def _params_struct(kind: AnalysisType) -> type[msgspec.Struct]:
    """The params object of `kind` as a Struct made from `protocol.SCHEMAS` (one source)."""
    fields = []
    for spec in SCHEMAS[kind]:
        fields.append((spec.name, _param_type(spec), spec.default))
    return msgspec.defstruct(
        f"{kind.value.capitalize()}Params",
        fields,
        forbid_unknown_fields=True,
        omit_defaults=True,
    )


def _param_type(spec: ParamSpec) -> Any:
    # A string is bounded by its length, a number by its range: msgspec.Meta takes one kind.
    if spec.kind is str:
        meta = msgspec.Meta(max_length=spec.max_length, description=spec.help)
    else:
        meta = msgspec.Meta(ge=spec.minimum, le=spec.maximum, description=spec.help)
    # A type made at run time: with an Any base, mypy does not read Annotated[...] as a
    # type written in the source.
    base: Any = spec.kind
    kind = Annotated[base, meta]
    return kind | None if spec.default is None else kind


HighlightsParams = _params_struct(AnalysisType.HIGHLIGHTS)
WorkoutParams = _params_struct(AnalysisType.WORKOUT)


WebhookUrl = Annotated[
    str,
    msgspec.Meta(
        description="POSTed the status body, signed (Standard Webhooks), when the session "
        "ends; needs WEBHOOK_SECRET on the server and a public address (API.md, Webhooks)",
        extra_json_schema={"format": "uri"},
    ),
]


# HighlightsParams and WorkoutParams are made at run time from protocol.SCHEMAS (one source),
# so a type checker cannot read them as annotations (the two `type: ignore[valid-type]`
# below); msgspec reads them at run time when it writes the OpenAPI schemas.
class HighlightsAnalyzeRequest(
    msgspec.Struct, tag_field="analysis_type", tag="highlights", omit_defaults=True
):
    """Start a highlights analysis; `params` absent or null means the defaults."""

    params: HighlightsParams | None = None  # type: ignore[valid-type]
    webhook_url: WebhookUrl | None = None


class WorkoutAnalyzeRequest(
    msgspec.Struct, tag_field="analysis_type", tag="workout", omit_defaults=True
):
    """Start a workout analysis; `params` absent or null means the defaults."""

    params: WorkoutParams | None = None  # type: ignore[valid-type]
    webhook_url: WebhookUrl | None = None


class AnalyzeForm(msgspec.Struct, omit_defaults=True):
    """Start an analysis from a form: `params` is the params object as JSON text."""

    analysis_type: AnalysisType
    params: Annotated[
        str,
        msgspec.Meta(
            description="HighlightsParams or WorkoutParams as JSON text; empty means {}",
            extra_json_schema={"contentMediaType": "application/json"},
        ),
    ] = ""
    webhook_url: WebhookUrl = ""


# Every declared body: `component_schemas` makes the OpenAPI schemas of these (and of
# every class they use). A new body goes here.
DECLARED: tuple[Any, ...] = (
    ErrorBody,
    SessionAnswer,
    TusUploadBody,
    Cleanup,
    StatusBody,
    SessionList,
    ResultsBody,
    HighlightsResults,
    WorkoutResults,
    OtioTimeline,
    PartialData,
    # The items a `partial` event carries (PartialData's schema refers to them by name).
    TimelineEntry,
    HighlightFound,
    WorkoutSegment,
    Health,
    ServiceIndex,
    HighlightsAnalyzeRequest,
    WorkoutAnalyzeRequest,
    AnalyzeForm,
)


def component_schemas() -> dict[str, Any]:
    """JSON Schemas of every declared body, keyed by class name, refs into components."""
    _, components = msgspec.json.schema_components(DECLARED, ref_template=SCHEMA_REF)
    return components


_encoder = msgspec.json.Encoder()


def json_response(
    body: msgspec.Struct, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response of a declared body."""
    return web.Response(
        body=_encoder.encode(body), status=status, headers=headers, content_type=_JSON
    )
