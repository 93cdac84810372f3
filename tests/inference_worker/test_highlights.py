"""Highlights analysis driven by scripted model replies at the `generate` seam."""

import pytest

from inference_worker.highlights import (
    CRITERIA_TOKENS,
    DESCRIBE_PROMPT,
    DESCRIBE_TOKENS,
    FALLBACK_CRITERIA,
    FALLBACK_VIDEO_DESCRIPTION,
    VERDICT_TOKENS,
    HighlightsAnalysis,
    HighlightSpan,
    analyze_highlights,
)
from inference_worker.judging import Batching
from protocol import AnalysisType, PartialKind, results_json, validate_params
from tests.inference_worker.scripted import (
    OrderReporter,
    RecordingReporter,
    ScriptedModel,
    blank_frames,
    segment_frames,
)

DESCRIPTION = "A soccer match between two teams in a stadium."
CRITERIA = "- a goal is scored\n- a diving save\n- a red card"


def params(**given):
    return validate_params(AnalysisType.HIGHLIGHTS, given)


def verdict(score, description="Something happens."):
    return f"Score: {score}\nDescription: {description}"


def run(verdicts, duration=None, overview=8, reporter=None, describe=DESCRIPTION, **given):
    """Analyse a video of len(verdicts) 10-s segments whose segments get `verdicts`."""
    duration = duration or 10.0 * len(verdicts)
    model = ScriptedModel([describe, CRITERIA, *verdicts])
    reporter = reporter or RecordingReporter()
    analysis = analyze_highlights(
        model,
        blank_frames(overview),
        segment_frames(duration),
        len(verdicts),
        params(**given),
        reporter,
    )
    return analysis, model, reporter


def spans(analysis):
    return [(h.start, h.end, h.significance) for h in analysis.highlights]


# ---- prompts and frames ------------------------------------------------------------------


def test_the_video_is_described_from_the_overview_frames_first():
    _, model, _ = run([verdict(1)] * 2, overview=8)
    first = model.calls[0]
    assert first.prompt == DESCRIBE_PROMPT
    assert first.frame_count == 8 and first.max_tokens == DESCRIBE_TOKENS


def test_criteria_are_asked_from_the_description_alone_without_frames():
    _, model, _ = run([verdict(1)] * 2)
    second = model.calls[1]
    assert DESCRIPTION in second.prompt and "highlight" in second.prompt
    assert second.frame_count == 0 and second.max_tokens == CRITERIA_TOKENS


def test_each_segment_is_one_call_with_its_frames_the_description_and_the_criteria():
    _, model, _ = run([verdict(1)] * 3)
    segment_calls = model.calls[2:]
    assert len(segment_calls) == 3
    for call in segment_calls:
        assert call.frame_count == 4 and call.max_tokens == VERDICT_TOKENS
        assert DESCRIPTION in call.prompt
        for criterion in ("a goal is scored", "a diving save", "a red card"):
            assert f"- {criterion}" in call.prompt
        assert "Score:" in call.prompt and "Description:" in call.prompt


def test_token_budgets_stay_small():
    assert DESCRIBE_TOKENS <= 200 and CRITERIA_TOKENS <= 128 and VERDICT_TOKENS <= 96


# ---- scoring, threshold, merging, cap ----------------------------------------------------


def test_segments_at_or_above_min_significance_are_kept_and_others_dropped():
    analysis, _, _ = run([verdict(3), verdict(5), verdict(2), verdict(4)], min_significance=4)
    assert spans(analysis) == [(10.0, 20.0, 5), (30.0, 40.0, 4)]


def test_adjacent_kept_segments_merge_with_the_highest_significance_and_its_description():
    replies = [verdict(6, "Build-up play."), verdict(8, "A goal."), verdict(7, "Celebration.")]
    analysis, _, _ = run([*replies, verdict(2), verdict(9, "A save.")])
    assert spans(analysis) == [(0.0, 30.0, 8), (40.0, 50.0, 9)]
    assert [h.description for h in analysis.highlights] == ["A goal.", "A save."]


def test_the_cap_keeps_the_most_significant_highlights_in_time_order():
    scores = [5, 2, 9, 2, 7, 2, 8]
    analysis, _, _ = run([verdict(s) for s in scores], max_highlights=2)
    assert spans(analysis) == [(20.0, 30.0, 9), (60.0, 70.0, 8)]


def test_the_cap_prefers_earlier_highlights_on_equal_significance():
    analysis, _, _ = run([verdict(s) for s in [6, 2, 6, 2, 6]], max_highlights=2)
    assert spans(analysis) == [(0.0, 10.0, 6), (20.0, 30.0, 6)]


def test_a_segment_whose_score_cannot_be_read_is_not_significant():
    analysis, _, _ = run(
        ["Description: a goal", "Score: banana", "", verdict(7)], min_significance=1
    )
    assert spans(analysis) == [(30.0, 40.0, 7)]


def test_a_kept_segment_without_a_usable_description_gets_a_placeholder_naming_its_time():
    analysis, _, _ = run([verdict(1), "Score: 9"])
    assert analysis.highlights == [HighlightSpan(10.0, 20.0, 9, "Notable moment at 00:10")]


def test_a_merged_highlight_uses_the_best_description_available():
    analysis, _, _ = run([verdict(6, "A corner kick."), "Score: 9", verdict(2)])
    assert analysis.highlights == [HighlightSpan(0.0, 20.0, 9, "A corner kick.")]


def test_a_trailing_sliver_merged_into_the_last_segment_is_part_of_its_highlight():
    analysis, _, _ = run([verdict(2), verdict(2), verdict(8, "Final whistle.")], duration=32.0)
    assert spans(analysis) == [(20.0, 32.0, 8)]


def test_the_results_carry_the_description_and_criteria_used():
    analysis, _, _ = run([verdict(1)])
    assert analysis.video_description == DESCRIPTION
    assert analysis.criteria == ["a goal is scored", "a diving save", "a red card"]


def test_highlight_items_have_the_api_fields_with_times_rounded_and_formatted():
    item = results_json(HighlightSpan(3599.996, 3610.0, 8, "A goal.").item())
    assert item == {
        "start": 3600.0,
        "end": 3610.0,
        "start_time": "01:00:00",
        "end_time": "01:00:10",
        "significance": 8,
        "description": "A goal.",
    }


# ---- messy replies -----------------------------------------------------------------------

GARBAGE = ["", "<end_of_utterance>", "😀😀😀", "the the the the", "{]", "x" * 5000, "Score:"]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_replies_throughout_still_give_a_complete_valid_result(garbage):
    reporter = RecordingReporter()
    model = ScriptedModel(respond=lambda prompt: garbage)
    analysis = analyze_highlights(
        model, blank_frames(8), segment_frames(30.0), 3, params(min_significance=1), reporter
    )
    assert isinstance(analysis, HighlightsAnalysis)
    assert analysis.video_description == FALLBACK_VIDEO_DESCRIPTION
    assert analysis.criteria == FALLBACK_CRITERIA
    assert analysis.highlights == [] and reporter.items(PartialKind.HIGHLIGHTS) == []
    assert [entry.significance for entry in analysis.timeline] == [None, None, None]
    assert reporter.steps[-1][0] == 1.0


def test_without_a_description_or_criteria_the_segments_are_judged_against_fallbacks():
    model = ScriptedModel(["???", "", verdict(8, "A goal.")])
    analysis = analyze_highlights(
        model, blank_frames(8), segment_frames(10.0), 1, params(), RecordingReporter()
    )
    prompt = model.calls[2].prompt
    assert "The whole video" not in prompt
    assert all(f"- {criterion}" in prompt for criterion in FALLBACK_CRITERIA)
    assert spans(analysis) == [(0.0, 10.0, 8)]


def test_a_reply_that_echoes_the_prompt_before_answering_is_still_read():
    def echo_then_answer(prompt):
        return prompt + "\nScore: 7\nDescription: A penalty is taken."

    model = ScriptedModel([DESCRIPTION, CRITERIA], respond=echo_then_answer)
    analysis = analyze_highlights(
        model, blank_frames(8), segment_frames(10.0), 1, params(), RecordingReporter()
    )
    assert analysis.highlights == [HighlightSpan(0.0, 10.0, 7, "A penalty is taken.")]


# ---- progress and partials ---------------------------------------------------------------


def test_progress_rises_from_0_to_1_through_readable_steps():
    _, _, reporter = run([verdict(1)] * 3)
    fractions = [fraction for fraction, _ in reporter.steps]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert [step for _, step in reporter.steps] == [
        "Describing the video",
        "Deciding what makes a highlight",
        "Analyzing segment 1/3",
        "Analyzing segment 2/3",
        "Analyzing segment 3/3",
        "Selecting highlights",
    ]
    assert fractions[3] == pytest.approx(3 / 5)


def test_progress_never_goes_down_or_past_1_when_the_segment_count_was_too_low():
    reporter = RecordingReporter()
    model = ScriptedModel([DESCRIPTION, CRITERIA, *[verdict(1)] * 5])
    analyze_highlights(model, blank_frames(2), segment_frames(50.0), 2, params(), reporter)
    fractions = [fraction for fraction, _ in reporter.steps]
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
    assert reporter.steps[-2][1] == "Analyzing segment 5/5"


def test_a_video_without_segments_completes_with_no_highlights():
    reporter = RecordingReporter()
    model = ScriptedModel([DESCRIPTION, CRITERIA])
    analysis = analyze_highlights(model, blank_frames(8), iter([]), 0, params(), reporter)
    assert analysis.highlights == [] and len(model.calls) == 2
    assert reporter.steps[-1] == (1.0, "Selecting highlights")


def test_each_highlight_is_sent_as_a_partial_equal_to_its_final_item():
    analysis, _, reporter = run([verdict(7, "A"), verdict(8, "B"), verdict(1), verdict(9, "C")])
    assert reporter.items(PartialKind.HIGHLIGHTS) == [h.item() for h in analysis.highlights]
    assert len(reporter.items(PartialKind.HIGHLIGHTS)) == 2


def test_a_highlight_is_sent_only_once_the_next_segment_does_not_extend_it():
    events = []
    model = ScriptedModel(
        [DESCRIPTION, CRITERIA, verdict(7), verdict(7), verdict(2), verdict(8)], events=events
    )
    analyze_highlights(
        model,
        blank_frames(8),
        segment_frames(40.0),
        4,
        params(),
        RecordingReporter(events=events),
    )
    judged = ["generate", "partial timeline"]
    assert events == ["generate"] * 2 + judged * 3 + ["partial highlights"] + judged + [
        "partial highlights"
    ]


def test_with_the_cap_partials_are_those_ranking_within_it_so_far_and_include_the_final_list():
    scores = [5, 2, 9, 2, 7, 2, 8]
    analysis, _, reporter = run([verdict(s) for s in scores], max_highlights=2)
    highlights = reporter.items(PartialKind.HIGHLIGHTS)
    sent = [(item.start, item.significance) for item in highlights]
    assert sent == [(0.0, 5), (20.0, 9), (40.0, 7), (60.0, 8)]
    assert all(h.item() in highlights for h in analysis.highlights)


def test_segments_are_pulled_one_at_a_time_between_model_calls():
    events = []
    model = ScriptedModel([DESCRIPTION, CRITERIA, *[verdict(1)] * 3], events=events)
    analyze_highlights(
        model,
        blank_frames(8),
        segment_frames(30.0, pulls=events),
        3,
        params(),
        RecordingReporter(),
    )
    assert events == [
        "generate",
        "generate",
        "pull 0",
        "generate",
        "pull 1",
        "generate",
        "pull 2",
        "generate",
    ]


# ---- the timeline -------------------------------------------------------------------------


def test_the_timeline_carries_every_judged_segment_with_its_score_and_sentence_in_order():
    replies = [verdict(2, "Players walk."), verdict(9, "A goal!"), "", verdict(5, "A pass.")]
    analysis, _, _ = run(replies, duration=35.0)
    assert [results_json(entry.item()) for entry in analysis.timeline] == [
        {"start": 0.0, "end": 10.0, "start_time": "00:00", "end_time": "00:10",
         "significance": 2, "description": "Players walk."},
        {"start": 10.0, "end": 20.0, "start_time": "00:10", "end_time": "00:20",
         "significance": 9, "description": "A goal!"},
        {"start": 20.0, "end": 30.0, "start_time": "00:20", "end_time": "00:30",
         "significance": None, "description": None},
        {"start": 30.0, "end": 35.0, "start_time": "00:30", "end_time": "00:35",
         "significance": 5, "description": "A pass."},
    ]  # fmt: skip


def test_the_timeline_leaves_the_highlights_as_they_were():
    """The same replies pick the same highlights as before the timeline existed."""
    scores = [5, 2, 9, 9, 2, 7, 2, 8]
    analysis, _, _ = run(
        [verdict(s, f"Moment {i}.") for i, s in enumerate(scores)], max_highlights=3
    )
    assert [h.item() for h in analysis.highlights] == [
        HighlightSpan(20.0, 40.0, 9, "Moment 2.").item(),
        HighlightSpan(50.0, 60.0, 7, "Moment 5.").item(),
        HighlightSpan(70.0, 80.0, 8, "Moment 7.").item(),
    ]
    assert [entry.significance for entry in analysis.timeline] == scores


def test_each_judged_segment_is_sent_as_a_timeline_partial_equal_to_its_entry():
    analysis, _, reporter = run([verdict(7, "A"), verdict(1, "B"), verdict(9, "C")])
    assert reporter.items(PartialKind.TIMELINE) == [e.item() for e in analysis.timeline]
    assert [kind for kind, _ in reporter.partials] == [
        PartialKind.TIMELINE,
        PartialKind.TIMELINE,
        PartialKind.HIGHLIGHTS,
        PartialKind.TIMELINE,
        PartialKind.HIGHLIGHTS,
    ]


# ---- batched judging ----------------------------------------------------------------------

BATCH_VERDICTS = [verdict(7, "A"), verdict(8, "B"), verdict(1), "", verdict(9, "C"), verdict(3)]


def _analyse(batch_size, events=None):
    """The 55 s video of BATCH_VERDICTS, judged `batch_size` segments per model call."""
    model = ScriptedModel([DESCRIPTION, CRITERIA, *BATCH_VERDICTS], events=events)
    reporter = OrderReporter()
    batching = Batching(model.batch, batch_size) if batch_size > 1 else None
    analysis = analyze_highlights(
        model,
        blank_frames(8),
        segment_frames(55.0, pulls=events),
        len(BATCH_VERDICTS),
        params(),
        reporter,
        batching=batching,
    )
    return analysis, reporter.events, model.calls


@pytest.mark.parametrize(("size", "rows"), [(2, [2] * 6), (4, [4] * 4 + [2] * 2), (6, [6] * 6)])
def test_batched_judging_gives_the_same_analysis_and_events_as_one_at_a_time(size, rows):
    analysis, events, calls = _analyse(1)
    batched, batched_events, batched_calls = _analyse(size)

    assert batched == analysis
    assert len(analysis.highlights) == 2  # the script finds something to compare
    # Progress and partials per segment, in the same order, with the same contents.
    assert batched_events == events
    assert [(c.prompt, c.frame_count, c.max_tokens) for c in batched_calls] == [
        (c.prompt, c.frame_count, c.max_tokens) for c in calls
    ]
    assert [c.rows for c in batched_calls] == [1, 1, *rows]


def test_batched_segments_are_pulled_one_batch_at_a_time_between_model_calls():
    events = []
    _analyse(4, events)
    pulls = [f"pull {i}" for i in range(6)]
    assert events == [
        "generate",
        "generate",
        *pulls[:4],
        "generate batch of 4",
        *pulls[4:],
        "generate batch of 2",
    ]
