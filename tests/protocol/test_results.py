"""The results types: what a worker sends decodes to them, and what breaks them is refused
with a message that says what and where."""

import json

import pytest

from protocol import (
    AnalysisType,
    ExerciseTotal,
    Highlight,
    ReelFile,
    ResultsBroken,
    TimelineEntry,
    Video,
    WorkerHighlightsResults,
    WorkoutResults,
    WorkoutSegment,
    WorkoutSummary,
    decode_results,
    results_json,
)

VIDEO = Video(filename="match.mp4", duration_seconds=612.0, width=1920, height=1080, fps=29.97)
HIGHLIGHTS = WorkerHighlightsResults(
    processing_time_seconds=45.2,
    model="mlx-community/SmolVLM2-500M-Video-Instruct-mlx",
    video=VIDEO,
    video_description="A football match.",
    criteria=["a goal is scored"],
    highlights_found=1,
    highlights=[
        Highlight(
            start=120.0,
            end=130.0,
            start_time="02:00",
            end_time="02:10",
            significance=8,
            description="A goal.",
            thumbnail="thumbnails/000.jpg",
        )
    ],
    reel=ReelFile(file="reel.mp4", duration_seconds=10.0),
    timeline=[
        TimelineEntry(
            start=120.0,
            end=130.0,
            start_time="02:00",
            end_time="02:10",
            significance=8,
            description="A goal.",
        )
    ],
)
WORKOUT = WorkoutResults(
    processing_time_seconds=80.1,
    model="smolvlm-local",
    video=VIDEO,
    segments=[
        WorkoutSegment(
            start=0.0,
            end=30.0,
            start_time="00:00",
            end_time="00:30",
            exercise="squat",
            reps=12,
            form_notes="Good depth.",
        )
    ],
    summary=WorkoutSummary(
        exercises=["squat"],
        total_reps=12,
        active_seconds=30.0,
        exercise_totals=[ExerciseTotal("squat", 12, 30.0)],
    ),
)


@pytest.mark.parametrize("results", [HIGHLIGHTS, WORKOUT], ids=["highlights", "workout"])
def test_results_round_trip_through_the_json_a_result_event_carries(results):
    wire = json.loads(json.dumps(results_json(results)))
    assert decode_results(wire) == results


def test_the_json_is_the_worker_shape_of_api_md_with_artifacts_named_by_file():
    data = results_json(HIGHLIGHTS)
    assert list(data)[:4] == ["analysisType", "processing_time_seconds", "model", "video"]
    assert data["analysisType"] == "highlights"
    assert data["highlights"][0]["thumbnail"] == "thumbnails/000.jpg"
    assert data["reel"] == {"file": "reel.mp4", "duration_seconds": 10.0}
    assert results_json(WORKOUT)["analysisType"] == "workout"


def test_results_of_another_analysis_than_the_job_asked_for_are_refused():
    wire = results_json(WORKOUT)
    assert decode_results(wire, AnalysisType.WORKOUT) == WORKOUT
    with pytest.raises(ResultsBroken, match="analysisType"):
        decode_results(wire, AnalysisType.HIGHLIGHTS)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda r: r["highlights"][0].update(significance=0), "$.highlights[0].significance"),
        (lambda r: r["timeline"][0].pop("start_time"), "start_time"),
        (lambda r: r.update(reel={"url": "/somewhere"}), "$.reel"),
        (lambda r: r.update(reel={"file": "", "duration_seconds": 1.0}), "$.reel.file"),
        (lambda r: r["video"].update(width="wide"), "$.video.width"),
        (lambda r: r.pop("analysisType"), "analysisType"),
    ],
    ids=["score out of range", "missing field", "reel as a url", "empty file", "type", "no tag"],
)
def test_results_that_break_the_contract_are_refused_saying_what_and_where(change, said):
    wire = results_json(HIGHLIGHTS)
    change(wire)
    with pytest.raises(ResultsBroken) as broken:
        decode_results(wire)
    assert said in str(broken.value)


def test_results_written_before_the_timeline_and_exercise_totals_existed_still_decode():
    highlights = results_json(HIGHLIGHTS)
    del highlights["timeline"]
    assert decode_results(highlights).timeline == []
    workout = results_json(WORKOUT)
    del workout["summary"]["exercise_totals"]
    decoded = decode_results(workout)
    assert isinstance(decoded, WorkoutResults) and decoded.summary.exercise_totals == []
