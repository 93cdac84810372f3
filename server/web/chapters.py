"""WebVTT chapters of a finished session, for a player's `<track kind="chapters">`.

Highlights: one chapter per judged segment of the timeline; workout: one per segment.
Adjacent segments that say the same (the same title) become one chapter, so the chapters
follow the video from start to end in order, without gaps or overlaps between them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from protocol import JobResults, TimelineEntry, WorkoutResults, WorkoutSegment

VTT_CONTENT_TYPE = "text/vtt"
# Two neighbours closer than this (results round times to 0.01 s) touch.
_TOUCHING_SECONDS = 0.005


@dataclass(frozen=True)
class Chapter:
    """One stretch of the video, `start` to `end` in seconds, and its title."""

    start: float
    end: float
    title: str


def session_chapters(results: JobResults) -> list[Chapter]:
    """The chapters of a session's results, in time order; none when it has no timeline."""
    chapters: list[Chapter] = []
    for start, end, title in _spans(results):
        previous = chapters[-1] if chapters else None
        if (
            previous is not None
            and previous.title == title
            and abs(previous.end - start) <= _TOUCHING_SECONDS
        ):
            chapters[-1] = replace(previous, end=end)
        else:
            chapters.append(Chapter(start, end, title))
    return chapters


def chapters_vtt(chapters: list[Chapter]) -> str:
    """The chapters as a WebVTT file: a header, then one numbered cue per chapter."""
    blocks = ["WEBVTT"]
    for number, chapter in enumerate(chapters, start=1):
        timing = f"{_timestamp(chapter.start)} --> {_timestamp(chapter.end)}"
        blocks.append(f"{number}\n{timing}\n{_cue_text(chapter.title)}")
    return "\n\n".join(blocks) + "\n"


def _spans(results: JobResults) -> Iterator[tuple[float, float, str]]:
    if isinstance(results, WorkoutResults):
        for segment in results.segments:
            if segment.end > segment.start:
                yield segment.start, segment.end, _workout_title(segment)
        return
    for entry in results.timeline:
        # One without length is nothing a player could show; its neighbours still say
        # where they are.
        if entry.end > entry.start:
            yield entry.start, entry.end, _timeline_title(entry)


def _timeline_title(entry: TimelineEntry) -> str:
    description = entry.description or "Not described"
    score = (
        f"significance {entry.significance}/10" if entry.significance is not None else "not scored"
    )
    return f"{description} ({score})"


def _workout_title(segment: WorkoutSegment) -> str:
    exercise = segment.exercise or "unknown"
    if exercise == "rest":
        return "Rest"
    reps = segment.reps
    return f"{exercise.capitalize()}, {reps} rep{'' if reps == 1 else 's'}"


def _timestamp(seconds: float) -> str:
    """hh:mm:ss.ttt, the WebVTT timestamp form a player reads in every case."""
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _cue_text(title: str) -> str:
    """One line of cue text: no blank line can end the cue early, no tag or `-->` inside."""
    line = re.sub(r"\s+", " ", title).strip() or "Untitled"
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
