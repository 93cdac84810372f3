"""Workout analysis driven by scripted model replies at the `generate` seam."""

import pytest

from inference_worker.judging import Batching
from inference_worker.workout import (
    MAX_NOTES_CHARS,
    UNKNOWN,
    VERDICT_TOKENS,
    WorkoutAnalysis,
    WorkoutSpan,
    analyze_workout,
)
from protocol import AnalysisType, PartialKind, results_json, validate_params
from tests.inference_worker.scripted import (
    OrderReporter,
    RecordingReporter,
    ScriptedModel,
    segment_frames,
)


def params(**given):
    return validate_params(AnalysisType.WORKOUT, given)


def verdict(exercise, reps=0, form="Steady pace."):
    return f"Exercise: {exercise}\nReps: {reps}\nForm: {form}"


def run(replies, duration=None, reporter=None, frames=4, **given):
    """Analyse a video of len(replies) 10-s segments whose segments get `replies`."""
    duration = duration or 10.0 * len(replies)
    model = ScriptedModel(replies)
    reporter = reporter or RecordingReporter()
    analysis = analyze_workout(
        model,
        segment_frames(duration, frames_per_segment=frames),
        len(replies),
        params(**given),
        reporter,
    )
    return analysis, model, reporter


def rows(analysis):
    return [(s.start, s.end, s.exercise, s.reps) for s in analysis.segments]


# ---- prompts and frames ------------------------------------------------------------------


def test_each_segment_is_one_call_with_its_frames_asking_exercise_reps_and_form():
    _, model, _ = run([verdict("squat", 5)] * 3, frames=6)
    assert len(model.calls) == 3
    for call in model.calls:
        assert call.frame_count == 6 and call.max_tokens == VERDICT_TOKENS
        for field in ("Exercise:", "Reps:", "Form:", "rest"):
            assert field in call.prompt


def test_the_exercise_hint_is_in_every_prompt_when_given():
    _, model, _ = run([verdict("squat", 5)] * 2, exercise_hint="goblet squats")
    assert all("goblet squats" in call.prompt for call in model.calls)


def test_without_a_hint_the_prompt_names_no_expected_exercise():
    _, model, _ = run([verdict("squat", 5)])
    assert "expected" not in model.calls[0].prompt


# ---- merging -----------------------------------------------------------------------------


def test_consecutive_segments_of_one_exercise_merge_with_reps_summed():
    replies = [
        verdict("Squats", 5),
        verdict("air squat", 6),
        verdict("rest"),
        verdict("push ups", 10),
    ]
    analysis, _, _ = run(replies)
    assert rows(analysis) == [
        (0.0, 20.0, "squat", 11),
        (20.0, 30.0, "rest", 0),
        (30.0, 40.0, "push-up", 10),
    ]


def test_rest_has_no_reps_and_no_form_notes_whatever_the_model_says():
    analysis, _, _ = run([verdict("resting", 7, "Knees cave in.")])
    assert analysis.segments == [WorkoutSpan(0.0, 10.0, "rest", 0, "")]


def test_the_same_exercise_after_a_break_is_a_new_segment():
    replies = [verdict("squat", 3), verdict("rest"), verdict("squat", 4)]
    analysis, _, _ = run(replies)
    assert rows(analysis) == [
        (0.0, 10.0, "squat", 3),
        (10.0, 20.0, "rest", 0),
        (20.0, 30.0, "squat", 4),
    ]


def test_merged_form_notes_are_combined_without_repeats():
    replies = [
        verdict("squat", 5, "Knees cave in."),
        verdict("squat", 5, "knees cave in"),
        verdict("squat", 5, "Good depth."),
    ]
    analysis, _, _ = run(replies)
    assert analysis.segments[0].form_notes == "Knees cave in. Good depth."


def test_merged_form_notes_stay_concise():
    replies = [
        verdict("squat", 1, f"Note {word} about the knees and the back.") for word in "abcdefgh"
    ]
    analysis, _, _ = run(replies)
    notes = analysis.segments[0].form_notes
    assert len(notes) <= MAX_NOTES_CHARS and notes.startswith("Note a about")


def test_reps_that_cannot_be_read_count_as_zero():
    analysis, _, _ = run(["Exercise: lunges\nReps: lots\nForm: fine", "Exercise: lunge"])
    assert rows(analysis) == [(0.0, 20.0, "lunge", 0)]
    assert isinstance(analysis.segments[0].reps, int)


def test_the_summary_lists_exercises_in_order_and_totals_reps_and_active_time():
    replies = [
        verdict("squat", 5),
        verdict("rest"),
        verdict("lunge", 8),
        verdict("squat", 4),
        verdict("rest"),
    ]
    analysis, _, _ = run(replies)
    assert results_json(analysis.summary()) == {
        "exercises": ["squat", "lunge"],
        "total_reps": 17,
        "active_seconds": 30.0,
        "exercise_totals": [
            {"exercise": "squat", "reps": 9, "seconds": 20.0},
            {"exercise": "lunge", "reps": 8, "seconds": 10.0},
        ],
    }


def test_segment_items_have_the_api_fields():
    item = results_json(WorkoutSpan(0.0, 30.004, "squat", 12, "Good depth.").item())
    assert item == {
        "start": 0.0,
        "end": 30.0,
        "start_time": "00:00",
        "end_time": "00:30",
        "exercise": "squat",
        "reps": 12,
        "form_notes": "Good depth.",
    }


# ---- messy replies -----------------------------------------------------------------------

GARBAGE = ["", "<end_of_utterance>", "😀😀😀", "the the the the", "{]", "x" * 5000, "Exercise:"]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_replies_give_unknown_segments_with_zero_reps(garbage):
    reporter = RecordingReporter()
    model = ScriptedModel(respond=lambda prompt: garbage)
    analysis = analyze_workout(model, segment_frames(30.0), 3, params(), reporter)
    assert isinstance(analysis, WorkoutAnalysis)
    assert analysis.segments == [WorkoutSpan(0.0, 30.0, UNKNOWN, 0, "")]
    # "unknown" is not an exercise to list, but it is not known to be rest either.
    assert results_json(analysis.summary()) == {
        "exercises": [],
        "total_reps": 0,
        "active_seconds": 30.0,
        "exercise_totals": [],
    }
    assert reporter.steps[-1][0] == 1.0


def test_free_text_replies_are_understood():
    replies = ["The person is doing squats, 12 reps. Back stays straight.", "Resting."]
    analysis, _, _ = run(replies)
    assert analysis.segments == [
        WorkoutSpan(0.0, 10.0, "squat", 12, "Back stays straight."),
        WorkoutSpan(10.0, 20.0, "rest", 0, ""),
    ]


# ---- progress and partials ---------------------------------------------------------------


def test_progress_rises_from_0_to_1_through_readable_steps():
    _, _, reporter = run([verdict("squat", 1)] * 4)
    fractions = [fraction for fraction, _ in reporter.steps]
    assert fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [step for _, step in reporter.steps] == [
        "Analyzing segment 1/4",
        "Analyzing segment 2/4",
        "Analyzing segment 3/4",
        "Analyzing segment 4/4",
        "Summarizing the workout",
    ]


def test_progress_never_goes_down_or_past_1_when_the_segment_count_was_too_low():
    reporter = RecordingReporter()
    model = ScriptedModel([verdict("squat", 1)] * 5)
    analyze_workout(model, segment_frames(50.0), 2, params(), reporter)
    fractions = [fraction for fraction, _ in reporter.steps]
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions[-1] == 1.0


def test_a_video_without_segments_completes_with_an_empty_workout():
    reporter = RecordingReporter()
    analysis = analyze_workout(ScriptedModel(), iter([]), 0, params(), reporter)
    assert analysis.segments == []
    assert results_json(analysis.summary()) == {
        "exercises": [],
        "total_reps": 0,
        "active_seconds": 0.0,
        "exercise_totals": [],
    }
    assert reporter.steps == [(1.0, "Summarizing the workout")]


def test_each_merged_segment_is_sent_as_a_partial_equal_to_its_final_item():
    replies = [verdict("squat", 5), verdict("squat", 5), verdict("rest"), verdict("plank")]
    analysis, _, reporter = run(replies)
    assert reporter.partials == [
        (PartialKind.SEGMENTS, segment.item()) for segment in analysis.segments
    ]


def test_a_segment_is_sent_only_once_the_next_one_does_not_continue_it():
    events = []
    replies = [verdict("squat", 5), verdict("squat", 5), verdict("rest"), verdict("plank")]
    model = ScriptedModel(replies, events=events)
    analyze_workout(model, segment_frames(40.0), 4, params(), RecordingReporter(events=events))
    assert events == [
        "generate",
        "generate",
        "generate",
        "partial segments",
        "generate",
        "partial segments",
        "partial segments",
    ]


def test_segments_are_pulled_one_at_a_time_between_model_calls():
    events = []
    model = ScriptedModel([verdict("squat", 1)] * 3, events=events)
    analyze_workout(model, segment_frames(30.0, pulls=events), 3, params(), RecordingReporter())
    assert events == ["pull 0", "generate", "pull 1", "generate", "pull 2", "generate"]


# ---- batched judging ----------------------------------------------------------------------


def _analyse(batch_size):
    """A 45 s workout (the last segment 5 s, so its prompt differs) judged in batches."""
    replies = [
        verdict("squat", 5, "Knees out."),
        verdict("squat", 4, "Deeper."),
        verdict("rest"),
        verdict("push-up", 8, "Straight back."),
        "",
    ]
    model = ScriptedModel(replies)
    reporter = OrderReporter()
    batching = Batching(model.batch, batch_size) if batch_size > 1 else None
    analysis = analyze_workout(
        model,
        segment_frames(45.0),
        len(replies),
        params(exercise_hint="squats"),
        reporter,
        batching=batching,
    )
    return analysis, reporter.events, model.calls


@pytest.mark.parametrize(("size", "rows"), [(2, [2, 2, 2, 2, 1]), (5, [5] * 5)])
def test_batched_judging_gives_the_same_analysis_and_events_as_one_at_a_time(size, rows):
    analysis, events, calls = _analyse(1)
    batched, batched_events, batched_calls = _analyse(size)

    assert batched == analysis
    assert [s.exercise for s in analysis.segments] == ["squat", "rest", "push-up", UNKNOWN]
    assert batched_events == events
    assert [(c.prompt, c.frame_count) for c in batched_calls] == [
        (c.prompt, c.frame_count) for c in calls
    ]
    assert len({c.prompt for c in calls}) == 2  # each row was asked its own question
    assert [c.rows for c in batched_calls] == rows
