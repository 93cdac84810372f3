"""WebVTT chapters built from results, read back with webvtt-py (an independent parser)."""

from __future__ import annotations

import msgspec
import pytest
import webvtt

from protocol import TimelineEntry, Video, WorkerHighlightsResults, WorkoutResults, WorkoutSegment
from protocol.results import WorkoutSummary
from server.web.chapters import Chapter, chapters_vtt, session_chapters

VIDEO = Video(filename="clip.mp4", duration_seconds=3725.25, width=64, height=48, fps=25.0)
# Chapters read only the times, scores and words; display strings are not theirs.
SHOWN = {"start_time": "", "end_time": ""}


def judged(start, end, significance, description):
    return TimelineEntry(
        start=start, end=end, significance=significance, description=description, **SHOWN
    )


def highlights(timeline):
    return WorkerHighlightsResults(
        processing_time_seconds=1.0,
        model="m",
        video=VIDEO,
        video_description="",
        criteria=[],
        highlights_found=0,
        highlights=[],
        reel=None,
        timeline=timeline,
    )


def workout(segments):
    summary = WorkoutSummary(exercises=[], total_reps=0, active_seconds=0.0)
    return WorkoutResults(
        processing_time_seconds=1.0, model="m", video=VIDEO, segments=segments, summary=summary
    )


def segment(start, end, exercise, reps):
    return WorkoutSegment(
        start=start, end=end, exercise=exercise, reps=reps, form_notes="", **SHOWN
    )


def parsed(chapters):
    """(start ms, end ms, text) of each cue, as a strict WebVTT reader sees them."""
    vtt = webvtt.from_string(chapters_vtt(chapters), strict=True)
    return [
        (cue.start_time.in_milliseconds(), cue.end_time.in_milliseconds(), cue.text)
        for cue in vtt.captions
    ]


def test_adjacent_segments_that_say_the_same_become_one_chapter():
    results = highlights(
        [
            judged(0.0, 10.0, 2, "Players walk."),
            judged(10.0, 20.0, 2, "Players walk."),
            judged(20.0, 30.0, 9, "A goal!"),
            judged(30.0, 40.0, 2, "Players walk."),
            judged(40.0, 45.5, None, None),
        ]
    )
    assert session_chapters(results) == [
        Chapter(0.0, 20.0, "Players walk. (significance 2/10)"),
        Chapter(20.0, 30.0, "A goal! (significance 9/10)"),
        Chapter(30.0, 40.0, "Players walk. (significance 2/10)"),
        Chapter(40.0, 45.5, "Not described (not scored)"),
    ]


def test_the_same_words_with_another_score_are_another_chapter():
    results = highlights([judged(0.0, 5.0, 3, "A run."), judged(5.0, 10.0, 8, "A run.")])
    assert [c.end for c in session_chapters(results)] == [5.0, 10.0]


def test_chapters_parse_as_webvtt_and_cover_the_video_without_overlap():
    timeline = [judged(i * 7.0, (i + 1) * 7.0, i % 3 + 1, f"Part {i % 3}.") for i in range(9)]
    timeline[-1] = msgspec.structs.replace(timeline[-1], end=3725.25)  # past an hour
    cues = parsed(session_chapters(highlights(timeline)))
    assert cues[0][0] == 0 and cues[-1][1] == 3_725_250
    assert all(previous[1] == cue[0] for previous, cue in zip(cues, cues[1:], strict=False))
    assert all(start < end for start, end, _ in cues)
    assert cues[1] == (7000, 14000, "Part 1. (significance 2/10)")


def test_workout_chapters_name_the_exercise_and_its_reps():
    segments = [
        segment(0.0, 30.0, "squat", 12),
        segment(30.0, 40.0, "rest", 0),
        segment(40.0, 50.0, "lunge", 1),
    ]
    cues = parsed(session_chapters(workout(segments)))
    assert cues == [
        (0, 30000, "Squat, 12 reps"),
        (30000, 40000, "Rest"),
        (40000, 50000, "Lunge, 1 rep"),
    ]


@pytest.mark.parametrize(
    "description",
    ["Fans chant <b>loudly</b> & wave", "A line --> an arrow", "Two\n\nparagraphs", "   "],
)
def test_model_text_cannot_break_the_cue(description):
    chapters = session_chapters(highlights([judged(0.0, 4.0, 5, description)]))
    ((start, end, text),) = parsed(chapters)
    assert (start, end) == (0, 4000)
    assert "\n" not in text and "-->" not in text.replace("--&gt;", "")
    assert text.endswith("(significance 5/10)")


def test_results_without_a_timeline_have_no_chapters():
    assert session_chapters(highlights([])) == []
    assert session_chapters(highlights([judged(3.0, 3.0, 5, "No length.")])) == []
    assert session_chapters(workout([])) == []
