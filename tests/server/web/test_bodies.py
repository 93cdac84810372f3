"""The wire bodies: each declared once, each round-trips, and the served document's schemas
are exactly the ones generated from those declarations."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import jsonschema_rs
import msgspec
import pytest

from protocol import (
    AnalysisType,
    Highlight,
    HighlightFound,
    PartialKind,
    TimelineEntry,
    Video,
    VideoInfo,
    WorkoutResults,
    WorkoutSegment,
)
from server.state.bodies import PartialData, StatusBody
from server.state.models import SessionStatus
from server.web import bodies
from server.web.exports import FORMATS, export_text
from tests.protocol.test_results import WORKOUT  # one workout example for both suites
from tests.server.http_helpers import STATUS_KEYS, start

SID = "550e8400-e29b-41d4-a716-446655440000"
VIDEO = Video(filename="match.mp4", duration_seconds=612.0, width=1920, height=1080, fps=30.0)
STATUS = StatusBody(
    session_id=SID,
    status=SessionStatus.PENDING,
    progress=0.0,
    current_step=None,
    analysis_type=AnalysisType.HIGHLIGHTS,
    created_at="2025-09-30T10:30:00Z",
    updated_at="2025-09-30T10:32:15Z",
    error=None,
    queue_position=2,
)
HIGHLIGHTS = bodies.HighlightsResults(
    processing_time_seconds=45.2,
    model="mlx-community/SmolVLM2-500M-Video-Instruct-mlx",
    video=VIDEO,
    video_description="a football match",
    criteria=["a goal"],
    highlights_found=1,
    highlights=[
        Highlight(
            start=120.0,
            end=130.0,
            start_time="02:00",
            end_time="02:10",
            significance=8,
            description="a goal",
            thumbnail=f"/api/v1/video/results/{SID}/thumbnails/0",
        )
    ],
    reel=bodies.Reel(url=f"/api/v1/video/results/{SID}/reel", duration_seconds=10.0),
    # The highlight's segment, then one whose reply could not be read.
    timeline=[
        TimelineEntry(
            start=120.0,
            end=130.0,
            start_time="02:00",
            end_time="02:10",
            significance=8,
            description="a goal",
        ),
        TimelineEntry(
            start=130.0,
            end=140.0,
            start_time="02:10",
            end_time="02:20",
            significance=None,
            description=None,
        ),
    ],
)
# One example of every declared body, as a handler would build it.
EXAMPLES: dict[type, Any] = {
    bodies.ErrorBody: bodies.ErrorBody(
        error="Results not ready",
        message="The session is processing",
        session_id=SID,
        status=SessionStatus.PROCESSING,
        progress=0.45,
        code=400,
    ),
    bodies.SessionAnswer: bodies.SessionAnswer(
        session_id=SID, status=SessionStatus.PENDING, message="Processing started"
    ),
    bodies.Cleanup: bodies.Cleanup(session_id=SID, message="Session cleaned up successfully"),
    bodies.TusUploadBody: bodies.TusUploadBody(
        upload_id=SID,
        offset=52428800,
        length=2147483648,
        expires_at=datetime(2026, 12, 8, 9, 30, tzinfo=timezone.utc),
        session_id=None,
    ),
    StatusBody: STATUS,
    bodies.SessionList: bodies.SessionList(sessions=[STATUS], count=1),
    bodies.ResultsBody: bodies.ResultsBody(session_id=SID, status="completed", results=HIGHLIGHTS),
    bodies.HighlightsResults: HIGHLIGHTS,
    WorkoutResults: WORKOUT,
    PartialData: PartialData(
        session_id=SID, kind=PartialKind.TIMELINE, item=HIGHLIGHTS.timeline[1]
    ),
    TimelineEntry: HIGHLIGHTS.timeline[1],
    HighlightFound: HighlightFound(
        start=120.0,
        end=130.0,
        start_time="02:00",
        end_time="02:10",
        significance=8,
        description="a goal",
    ),
    WorkoutSegment: WORKOUT.segments[0],
    # What the export route sends for `otio`: OpenTimelineIO's own writing, read as declared.
    bodies.OtioTimeline: msgspec.json.decode(
        export_text(
            FORMATS["otio"],
            VideoInfo("match.mp4", 612.0, 1920, 1080, 29.97),
            HIGHLIGHTS.highlights,
            session_id=SID,
        ),
        type=bodies.OtioTimeline,
    ),
    bodies.Health: bodies.Health(
        status="healthy",
        model="smolvlm-local",
        model_state="ready",
        model_error=None,
        running=1,
        queued=0,
        version="0.1.0",
    ),
    bodies.ServiceIndex: bodies.ServiceIndex(
        service="smolvlm-video-server",
        version="0.1.0",
        openapi="/api/v1/openapi.json",
        endpoints=[bodies.Endpoint(method="GET", path="/health", summary="Liveness")],
    ),
    bodies.HighlightsAnalyzeRequest: bodies.HighlightsAnalyzeRequest(
        params=bodies.HighlightsParams(min_significance=6)
    ),
    bodies.WorkoutAnalyzeRequest: bodies.WorkoutAnalyzeRequest(),
    bodies.AnalyzeForm: bodies.AnalyzeForm(
        analysis_type=AnalysisType.WORKOUT, params='{"exercise_hint": "squats"}'
    ),
}


def test_every_declared_body_has_an_example_here():
    assert set(EXAMPLES) == set(bodies.DECLARED)


@pytest.mark.parametrize("declared", bodies.DECLARED, ids=lambda cls: cls.__name__)
def test_each_declared_body_round_trips_and_fits_its_generated_schema(declared):
    example = EXAMPLES[declared]
    wire = msgspec.json.encode(example)
    assert msgspec.json.decode(wire, type=declared) == example
    document = {"components": {"schemas": bodies.component_schemas()}}
    schema = {**document, "$ref": f"#/components/schemas/{declared.__name__}"}
    jsonschema_rs.validator_for(schema).validate(msgspec.json.decode(wire))


def test_the_wire_names_are_the_ones_api_md_fixes():
    status = msgspec.json.decode(msgspec.json.encode(STATUS))
    assert tuple(status) == STATUS_KEYS
    results = msgspec.json.decode(msgspec.json.encode(HIGHLIGHTS))
    assert list(results)[:4] == ["analysisType", "processing_time_seconds", "model", "video"]
    assert results["analysisType"] == "highlights"
    assert msgspec.json.decode(msgspec.json.encode(WORKOUT))["analysisType"] == "workout"


def test_an_error_body_leaves_out_what_does_not_apply():
    body = bodies.ErrorBody(error="Bad request", message="why", code=400)
    assert msgspec.json.decode(msgspec.json.encode(body)) == {
        "error": "Bad request",
        "message": "why",
        "code": 400,
    }


def test_a_partial_events_item_is_one_of_the_declared_items_of_its_list():
    document = {"components": {"schemas": bodies.component_schemas()}}
    validator = jsonschema_rs.validator_for(
        {**document, "$ref": "#/components/schemas/PartialData"}
    )
    data = msgspec.to_builtins(EXAMPLES[PartialData])
    assert validator.is_valid(data)
    data["item"] = {"start": 0.0, "end": 2.0}  # no display times, nothing judged
    assert not validator.is_valid(data)
    with pytest.raises(msgspec.ValidationError, match="TimelineEntry"):
        PartialData(session_id=SID, kind=PartialKind.SEGMENTS, item=HIGHLIGHTS.timeline[0])


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


async def test_every_schema_the_served_document_holds_comes_from_a_declaration(
    aiohttp_client, tmp_path
):
    client = await start(aiohttp_client, tmp_path)
    document = await (await client.get("/api/v1/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert schemas == msgspec.json.decode(msgspec.json.encode(bodies.component_schemas()))
    assert {cls.__name__ for cls in bodies.DECLARED} <= set(schemas)
    prefix = "#/components/schemas/"
    used = {ref.removeprefix(prefix) for ref in _refs(document) if ref.startswith(prefix)}
    assert used <= set(schemas)


async def test_every_json_answer_of_a_route_is_a_declared_body(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    document = await (await client.get("/api/v1/openapi.json")).json()
    for path, operations in document["paths"].items():
        if path == "/api/v1/openapi.json":
            continue  # the document itself is OpenAPI's own shape
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                media = response.get("content", {}).get("application/json")
                if media is not None:
                    assert set(media["schema"]) == {"$ref"}, (method, path, code)
