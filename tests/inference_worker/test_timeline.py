"""Segment plans, frame times and display timestamps."""

import pytest

from inference_worker.timeline import (
    Segment,
    format_timestamp,
    frame_times,
    overview_times,
    plan_segments,
    span_fields,
)


def spans(segments):
    return [(s.start, s.end) for s in segments]


def test_segments_cover_the_video_back_to_back_and_are_numbered_from_zero():
    segments = plan_segments(30.0, 10.0)
    assert segments == [Segment(0, 0.0, 10.0), Segment(1, 10.0, 20.0), Segment(2, 20.0, 30.0)]


def test_a_trailing_sliver_under_a_third_of_a_segment_joins_the_previous_one():
    assert spans(plan_segments(32.0, 10.0)) == [(0.0, 10.0), (10.0, 20.0), (20.0, 32.0)]


def test_a_trailing_piece_of_a_third_or_more_is_its_own_segment():
    assert spans(plan_segments(34.0, 10.0)) == [
        (0.0, 10.0),
        (10.0, 20.0),
        (20.0, 30.0),
        (30.0, 34.0),
    ]


def test_a_video_shorter_than_one_segment_is_one_segment():
    assert plan_segments(4.0, 10.0) == [Segment(0, 0.0, 4.0)]
    assert plan_segments(0.5, 10.0) == [Segment(0, 0.0, 0.5)]


def test_float_division_does_not_invent_a_sliver_segment():
    segments = plan_segments(0.3, 0.1)
    assert len(segments) == 3 and segments[-1].end == 0.3


@pytest.mark.parametrize("duration", [0.0, -5.0, float("nan"), float("inf")])
def test_a_video_without_a_usable_length_has_no_segments(duration):
    assert plan_segments(duration, 10.0) == []


@pytest.mark.parametrize("length", [0.0, -1.0, float("nan")])
def test_a_segment_length_that_is_not_positive_is_a_programming_error(length):
    with pytest.raises(ValueError, match="segment_seconds"):
        plan_segments(30.0, length)


def test_the_last_segment_ends_exactly_at_the_duration():
    duration = 612.37
    segments = plan_segments(duration, 7.0)
    assert segments[0].start == 0.0 and segments[-1].end == duration
    assert all(a.end == b.start for a, b in zip(segments, segments[1:], strict=False))


def test_frame_times_are_the_centres_of_equal_slices():
    assert frame_times(10.0, 20.0, 4) == [11.25, 13.75, 16.25, 18.75]
    assert frame_times(0.0, 3.0, 1) == [1.5]


def test_frame_times_stay_inside_the_half_open_segment():
    times = frame_times(5.0, 5.1, 16)
    assert all(5.0 <= t < 5.1 for t in times) and times == sorted(times)


def test_no_frames_asked_means_no_times_and_an_empty_segment_gives_its_start():
    assert frame_times(0.0, 10.0, 0) == []
    assert frame_times(7.0, 7.0, 2) == [7.0, 7.0]


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.0, "00:00"),
        (9.99, "00:09"),
        (120.0, "02:00"),
        (3599.9, "59:59"),
        (3600.0, "01:00:00"),
        (3725.0, "01:02:05"),
        (-3.0, "00:00"),
        (float("nan"), "00:00"),
    ],
)
def test_timestamps_are_mm_ss_under_an_hour_and_hh_mm_ss_from_an_hour(seconds, text):
    assert format_timestamp(seconds) == text


def test_span_fields_round_seconds_to_hundredths_and_format_the_rounded_value():
    assert span_fields(119.996, 130.004) == {
        "start": 120.0,
        "end": 130.0,
        "start_time": "02:00",
        "end_time": "02:10",
    }


def test_overview_times_are_segment_frame_times_spread_over_the_video():
    segments = [frame_times(s.start, s.end, 4) for s in plan_segments(60.0, 10.0)]
    pool = [time for times in segments for time in times]

    picked = overview_times(segments, 8)

    assert len(picked) == 8 and set(picked) <= set(pool)
    assert picked == sorted(picked)
    # Spread: one pick in every 3 of the 24 frames, from the first eighth to the last.
    assert picked[0] < 60.0 / 8 and picked[-1] > 60.0 * 7 / 8


def test_overview_takes_every_frame_when_the_segments_have_no_more():
    segments = [[1.25, 3.75], [6.25, 8.75]]
    assert overview_times(segments, 8) == [1.25, 3.75, 6.25, 8.75]
