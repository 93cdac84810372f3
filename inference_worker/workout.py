"""Follow a workout: which exercise in each segment, how many repetitions, how the form looks.

One question per segment (several segments per model call when batched, see
inference_worker/judging.py); consecutive segments of the same exercise become one result
segment. The model is reached only through `generate(prompt, frames, max_tokens) -> str`
and `generate_batch`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from inference_worker.judging import Batching, judged
from inference_worker.replies import (
    REST,
    parse_exercise,
    parse_form_notes,
    parse_reps,
    strip_echo,
)
from inference_worker.reporting import Generate, Reporter, StepProgress
from inference_worker.timeline import Segment, SegmentFrames, span_fields
from protocol import ExerciseTotal, PartialKind, WorkoutSegment, WorkoutSummary

# Three short labelled lines.
VERDICT_TOKENS = 64
# What a segment is called when the model named no exercise we could read.
UNKNOWN = "unknown"
# Notes of merged segments stay a glance long: a few, and a couple of sentences at most.
MAX_NOTES = 3
MAX_NOTES_CHARS = 200


def segment_prompt(segment: Segment, exercise_hint: str | None) -> str:
    """Ask for the exercise (or rest), the repetitions and a form note, in a fixed format."""
    seconds = max(1, round(segment.duration))
    lines = [f"These frames are taken in order from {seconds} seconds of a workout video."]
    if exercise_hint:
        lines.append(f"The person is expected to be doing: {exercise_hint.rstrip('.')}.")
    lines.append(
        "Which exercise is the person doing, how many repetitions do they complete in these "
        "frames, and how is their form? If they are not exercising, the exercise is rest. "
        "Reply in exactly this format:"
    )
    lines.append("Exercise: <exercise name, or rest>")
    lines.append("Reps: <number>")
    lines.append("Form: <one short note>")
    return "\n".join(lines)


@dataclass(frozen=True)
class WorkoutSpan:
    """A stretch of one exercise (or rest): reps summed, form notes combined (exact times)."""

    start: float
    end: float
    exercise: str
    reps: int
    form_notes: str

    def item(self) -> WorkoutSegment:
        """The segment item of API.md workout results."""
        return WorkoutSegment(
            **span_fields(self.start, self.end),
            exercise=self.exercise,
            reps=self.reps,
            form_notes=self.form_notes,
        )


@dataclass(frozen=True)
class WorkoutAnalysis:
    """The workout as consecutive segments of one exercise (or rest) each, in time order."""

    segments: list[WorkoutSpan]

    def summary(self) -> WorkoutSummary:
        """Distinct exercises in order of first appearance, total reps, non-rest seconds,
        and each exercise's own reps and seconds (`exercise_totals`, in the same order).

        "unknown" is not an exercise, so it is not listed, but its time is not rest either.
        """
        reps: dict[str, int] = {}
        seconds: dict[str, float] = {}
        for segment in self.segments:
            if segment.exercise in (REST, UNKNOWN):
                continue
            reps[segment.exercise] = reps.get(segment.exercise, 0) + segment.reps
            seconds[segment.exercise] = (
                seconds.get(segment.exercise, 0.0) + segment.end - segment.start
            )
        active = sum(s.end - s.start for s in self.segments if s.exercise != REST)
        return WorkoutSummary(
            exercises=list(reps),
            total_reps=sum(segment.reps for segment in self.segments),
            active_seconds=round(active, 2),
            exercise_totals=[
                ExerciseTotal(exercise, reps[exercise], round(seconds[exercise], 2))
                for exercise in reps
            ],
        )


def analyze_workout(
    generate: Generate,
    segments: Iterable[SegmentFrames],
    segment_count: int,
    params: dict[str, Any],
    reporter: Reporter,
    *,
    batching: Batching | None = None,
) -> WorkoutAnalysis:
    """Judge each segment, merge runs of the same exercise, report each run when it ends.

    `segments` is consumed one at a time (one batch at a time with `batching`), so its
    producer can decode ahead while the model judges. An exercise that cannot be read is
    "unknown"; reps that cannot be read count as 0; rest has no reps and no notes.
    """
    progress = StepProgress(reporter)
    collector = _RunCollector(reporter)

    def starting(number: int) -> None:
        count = max(segment_count, number)
        progress.report((number - 1) / count, f"Analyzing segment {number}/{count}")

    def prompt_for(item: SegmentFrames) -> str:
        return segment_prompt(item.segment, params["exercise_hint"])

    replies = judged(generate, batching, segments, prompt_for, VERDICT_TOKENS, starting)
    for item, prompt, raw in replies:
        reply = strip_echo(raw, prompt)
        exercise = parse_exercise(reply) or UNKNOWN
        if exercise == REST:
            collector.add(item.segment, REST, 0, None)
        else:
            collector.add(item.segment, exercise, parse_reps(reply) or 0, parse_form_notes(reply))
    collector.finish()
    progress.report(1.0, "Summarizing the workout")
    return WorkoutAnalysis(collector.segments)


@dataclass
class _Run:
    start: float
    end: float
    exercise: str
    reps: int
    notes: list[str] = field(default_factory=list)

    def add_note(self, note: str | None) -> None:
        if note and _note_key(note) not in {_note_key(n) for n in self.notes}:
            self.notes.append(note)

    def segment(self) -> WorkoutSpan:
        kept: list[str] = []
        for note in self.notes[:MAX_NOTES]:
            if len(" ".join([*kept, note])) > MAX_NOTES_CHARS:
                break
            kept.append(note)
        return WorkoutSpan(self.start, self.end, self.exercise, self.reps, " ".join(kept))


def _note_key(note: str) -> str:
    return " ".join(re.findall(r"\w+", note.lower()))


class _RunCollector:
    """Merges consecutive segments of the same exercise and reports each finished run."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self._run: _Run | None = None
        self.segments: list[WorkoutSpan] = []

    def add(self, segment: Segment, exercise: str, reps: int, note: str | None) -> None:
        """Take one judged segment, in time order."""
        run = self._run
        if (
            run is None
            or run.exercise != exercise
            or not math.isclose(run.end, segment.start, abs_tol=1e-6)
        ):
            self._close()
            run = self._run = _Run(segment.start, segment.end, exercise, 0)
        run.end = segment.end
        run.reps += reps
        run.add_note(note)

    def finish(self) -> None:
        """No more segments: the open run, if any, is complete."""
        self._close()

    def _close(self) -> None:
        if self._run is not None:
            finished = self._run.segment()
            self._run = None
            self.segments.append(finished)
            self._reporter.partial(PartialKind.SEGMENTS, finished.item())
