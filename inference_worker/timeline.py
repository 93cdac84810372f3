"""Where in a video the model looks: segments, the frame times inside them, display times."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from PIL import Image

# A trailing piece shorter than this share of a segment is too little video to judge alone.
_SLIVER_SHARE = 1 / 3
# Float division leaves 29.999999… where 30 was meant; this much is counted as exact.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Segment:
    """One stretch of the video, `start` to `end` in seconds; `index` counts from 0."""

    index: int
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class SegmentFrames:
    """A segment with the frames sampled from it, in time order."""

    segment: Segment
    frames: list[Image.Image]


def plan_segments(duration: float, segment_seconds: float) -> list[Segment]:
    """Cut [0, duration] into consecutive segments of `segment_seconds`.

    A trailing sliver shorter than a third of a segment joins the previous segment; a
    video shorter than one segment is one segment. A video with no length has none.
    """
    if not segment_seconds > 0 or not math.isfinite(segment_seconds):
        raise ValueError(f"segment_seconds must be a positive number, got {segment_seconds!r}")
    if not math.isfinite(duration) or duration <= 0:
        return []
    whole = max(1, math.floor(duration / segment_seconds + _EPSILON))
    remainder = duration - whole * segment_seconds
    count = whole + 1 if remainder >= segment_seconds * _SLIVER_SHARE else whole
    return [
        Segment(i, i * segment_seconds, duration if i == count - 1 else (i + 1) * segment_seconds)
        for i in range(count)
    ]


def frame_times(start: float, end: float, count: int) -> list[float]:
    """`count` times spread evenly over [start, end): the centres of equal slices."""
    if count <= 0:
        return []
    step = max(end - start, 0.0) / count
    return [start + (i + 0.5) * step for i in range(count)]


class SpanFields(TypedDict):
    """The fields of `protocol.results.Span`, to build any result item with `**`."""

    start: float
    end: float
    start_time: str
    end_time: str


def span_fields(start: float, end: float) -> SpanFields:
    """The time fields of a result item: seconds rounded to 0.01 and their display strings."""
    start, end = round(start, 2), round(end, 2)
    return {
        "start": start,
        "end": end,
        "start_time": format_timestamp(start),
        "end_time": format_timestamp(end),
    }


def format_timestamp(seconds: float) -> str:
    """ "mm:ss" under an hour, "hh:mm:ss" from an hour on; whole seconds, rounded down."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    total = math.floor(seconds + _EPSILON)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def overview_times(segment_times: Sequence[Sequence[float]], count: int) -> list[float]:
    """`count` of the segments' frame times, spread evenly over them, in ascending order.

    The overview that the describe step shows is picked among the frames the segments
    show anyway, so every frame is decoded and run through the vision tower once per job.
    All of them when there are no more than `count`.
    """
    pool = sorted(time for times in segment_times for time in times)
    if len(pool) <= count:
        return pool
    # The centres of `count` equal slices of the pool, as frame_times does for seconds.
    return [pool[int((i + 0.5) * len(pool) / count)] for i in range(count)]
