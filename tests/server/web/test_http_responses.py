"""The pure parts of the edge: error bodies and the results -> API transform."""

from __future__ import annotations

import msgspec

from protocol import results_json
from server.web.responses import error_body, public_results, reel_name, thumbnail_name
from tests.protocol.test_results import HIGHLIGHTS, WORKOUT

SID = "550e8400-e29b-41d4-a716-446655440000"
BASE = f"/api/v1/video/results/{SID}"


def test_error_body_has_the_shape_of_api_md():
    assert msgspec.to_builtins(error_body(404, "Session not found", session_id=SID)) == {
        "error": "Session not found",
        "message": "Session not found",
        "sessionId": SID,
        "code": 404,
    }
    assert "sessionId" not in msgspec.to_builtins(error_body(400, "Bad request", "why"))


def test_worker_artifact_names_become_api_urls():
    worker = msgspec.structs.replace(
        HIGHLIGHTS,
        highlights=[
            HIGHLIGHTS.highlights[0],
            msgspec.structs.replace(HIGHLIGHTS.highlights[0], start=131.0, thumbnail=None),
        ],
    )
    public = msgspec.to_builtins(public_results(SID, worker))
    assert public["highlights"][0]["thumbnail"] == f"{BASE}/thumbnails/0"
    assert public["highlights"][1]["thumbnail"] is None
    assert public["reel"] == {"url": f"{BASE}/reel", "duration_seconds": 10.0}
    assert public["model"] == worker.model
    assert worker.highlights[0].thumbnail == "thumbnails/000.jpg", "input left unchanged"


def test_only_the_artifact_fields_differ_from_the_workers_results():
    worker = results_json(HIGHLIGHTS)
    public = msgspec.to_builtins(public_results(SID, HIGHLIGHTS))
    for results in (worker, public):
        results.pop("reel")
        for item in results["highlights"]:
            item.pop("thumbnail")
    assert public == worker


def test_no_reel_stays_null_and_workout_results_pass_through():
    no_reel = msgspec.structs.replace(HIGHLIGHTS, reel=None)
    assert public_results(SID, no_reel).reel is None
    assert public_results(SID, WORKOUT) == WORKOUT


def test_a_local_model_path_is_reduced_to_its_folder_name():
    local = msgspec.structs.replace(WORKOUT, model="/home/me/models/smolvlm-local/")
    assert public_results(SID, local).model == "smolvlm-local"


def test_artifact_names_are_looked_up_by_index():
    assert thumbnail_name(HIGHLIGHTS, 0) == "thumbnails/000.jpg"
    assert thumbnail_name(HIGHLIGHTS, 1) is None and thumbnail_name(None, 0) is None
    assert thumbnail_name(WORKOUT, 0) is None
    assert reel_name(HIGHLIGHTS) == "reel.mp4"
    assert reel_name(msgspec.structs.replace(HIGHLIGHTS, reel=None)) is None
    assert reel_name(WORKOUT) is None
