"""The pure parts of the edge: error bodies and the results -> API transform."""

from __future__ import annotations

import msgspec

from server.web.responses import error_body, public_results, reel_name, thumbnail_name

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
    worker = {
        "analysisType": "highlights",
        "model": "mlx-community/SmolVLM2-500M-Video-Instruct-mlx",
        "highlights": [
            {"start": 1.0, "thumbnail": "thumbnails/000.jpg"},
            {"start": 2.0, "thumbnail": None},
        ],
        "reel": {"file": "reel.mp4", "duration_seconds": 20.0},
    }
    public = public_results(SID, worker)
    assert public["highlights"][0]["thumbnail"] == f"{BASE}/thumbnails/0"
    assert public["highlights"][1]["thumbnail"] is None
    assert public["reel"] == {"url": f"{BASE}/reel", "duration_seconds": 20.0}
    assert public["model"] == worker["model"]
    assert worker["highlights"][0]["thumbnail"] == "thumbnails/000.jpg", "input left unchanged"


def test_no_reel_stays_null_and_workout_results_pass_through():
    assert public_results(SID, {"highlights": [], "reel": None})["reel"] is None
    workout = {"analysisType": "workout", "segments": [{"start": 0.0}], "summary": {}}
    assert public_results(SID, workout) == workout


def test_a_local_model_path_is_reduced_to_its_folder_name():
    public = public_results(SID, {"model": "/home/me/models/smolvlm-local/"})
    assert public["model"] == "smolvlm-local"


def test_artifact_names_are_looked_up_by_index():
    results = {"highlights": [{"thumbnail": "thumbnails/000.jpg"}], "reel": {"file": "reel.mp4"}}
    assert thumbnail_name(results, 0) == "thumbnails/000.jpg"
    assert thumbnail_name(results, 1) is None and thumbnail_name(None, 0) is None
    assert reel_name(results) == "reel.mp4" and reel_name({"reel": None}) is None
