"""The results of a job, declared once: what a worker builds, the runner checks and every
reader (the stores, the HTTP bodies, chapters, exports, the client) reads by field name.

These are the objects of API.md's Results section. A worker names its artifacts (thumbnail
files, the reel file) relative to its output dir; the HTTP edge shows them as URLs. The
only field whose shape differs is the reel (a file here, a URL there), so the highlights
results are declared once as `HighlightsResultsOf[ReelT]` and made twice from it:
`WorkerHighlightsResults` with a `ReelFile` here, and the API's `HighlightsResults` with
its URL `Reel` in `server/web/bodies.py`. A highlight's `thumbnail` is a string in both
(the file name, then its URL). Workout results have no artifacts: one type serves both.

msgspec Structs, like the server's other wire bodies: `decode_results` checks a worker's
JSON against these declarations (types, ranges, required fields) in one call, and their
JSON Schema is what the OpenAPI document serves.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

import msgspec

from protocol.analysis_type import AnalysisType

Seconds = Annotated[float, msgspec.Meta(ge=0, description="seconds from the video's start")]
Clock = Annotated[str, msgspec.Meta(description='"mm:ss" or "hh:mm:ss", for display')]
Significance = Annotated[int, msgspec.Meta(ge=1, le=10)]
Reps = Annotated[int, msgspec.Meta(ge=0)]


class Span(msgspec.Struct, frozen=True, kw_only=True):
    """A stretch of the video: seconds (rounded to 0.01) and their display strings."""

    start: Seconds
    end: Seconds
    start_time: Clock
    end_time: Clock


class TimelineEntry(Span, frozen=True, kw_only=True):
    """One judged segment: its significance and sentence, null where the reply was unreadable."""

    significance: Significance | None
    description: str | None


class HighlightFound(Span, frozen=True, kw_only=True):
    """A highlight as the analysis finds it (a `highlights` partial): no thumbnail yet."""

    significance: Significance
    description: str


class Highlight(HighlightFound, frozen=True, kw_only=True):
    """One highlight: a stretch of the video, how significant it is, and its thumbnail.

    `thumbnail` is the JPEG's file name relative to the worker's output dir in a worker's
    results, and its API URL in the API's results; null when there is none.
    """

    thumbnail: str | None


class WorkoutSegment(Span, frozen=True, kw_only=True):
    """A stretch of one exercise (or rest) and its repetitions."""

    exercise: str
    reps: Reps
    form_notes: str


class ExerciseTotal(msgspec.Struct, frozen=True):
    """One exercise's repetitions and seconds over the whole workout."""

    exercise: str
    reps: Reps
    seconds: float


class WorkoutSummary(msgspec.Struct, frozen=True):
    """Distinct exercises in order, total repetitions and the seconds not at rest, and each
    exercise's own totals in the same order."""

    exercises: list[str]
    total_reps: int
    active_seconds: float
    # Empty in results stored before it existed.
    exercise_totals: list[ExerciseTotal] = msgspec.field(default_factory=list)


class Video(msgspec.Struct, frozen=True):
    """What the probe found about the uploaded video; `filename` is the client's name."""

    filename: str
    duration_seconds: float
    width: int
    height: int
    fps: float


class ReelFile(msgspec.Struct, frozen=True):
    """The highlight reel as the worker wrote it: its file name in the output dir, and length."""

    file: Annotated[str, msgspec.Meta(min_length=1)]
    duration_seconds: float


class _ResultsOf(msgspec.Struct, frozen=True, tag_field="analysisType"):
    """What the results of both analyses start with (the tag `analysisType` comes first)."""

    processing_time_seconds: float
    model: Annotated[str, msgspec.Meta(description="Hugging Face id or local folder name")]
    video: Video


ReelT = TypeVar("ReelT")


class HighlightsResultsOf(_ResultsOf, Generic[ReelT], frozen=True):
    """Results of a highlights analysis (API.md, Results), whatever names the reel."""

    video_description: str
    criteria: list[str]
    highlights_found: int
    highlights: list[Highlight]
    reel: ReelT | None
    # Every judged segment in time order; empty in results stored before it existed.
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)


class WorkerHighlightsResults(HighlightsResultsOf[ReelFile], frozen=True, tag="highlights"):
    """Results of a highlights analysis as the worker reports them: artifacts named by file."""


class WorkoutResults(_ResultsOf, frozen=True, tag="workout"):
    """Results of a workout analysis (API.md, Results)."""

    segments: list[WorkoutSegment]
    summary: WorkoutSummary


# What a worker's `result` event carries, and what a completed session keeps.
JobResults = WorkerHighlightsResults | WorkoutResults

# An item of one of the results lists, as a `partial` event sends it (its `kind` says which).
PartialItem = TimelineEntry | HighlightFound | WorkoutSegment

# By the wire value of AnalysisType.
_RESULTS_OF: dict[str, type[JobResults]] = {
    "highlights": WorkerHighlightsResults,
    "workout": WorkoutResults,
}


class ResultsBroken(ValueError):
    """A worker's results do not fit their declaration; `str()` says what and where."""


def decode_results(raw: Any, analysis_type: AnalysisType | None = None) -> JobResults:
    """A worker's results (JSON data, as a `result` event carries them) as their type.

    With `analysis_type`, they must be that analysis's results. Raises ResultsBroken
    saying what breaks the contract ("Expected `int` >= 1, got 0 - at `$.highlights[0]...`").
    """
    wanted: Any = JobResults if analysis_type is None else _RESULTS_OF[analysis_type.value]
    try:
        return msgspec.convert(raw, wanted)
    except msgspec.ValidationError as exc:
        raise ResultsBroken(str(exc)) from None


def results_json(results: JobResults | PartialItem) -> dict[str, Any]:
    """Results (or a partial item) as the JSON object a `result` event and a store carry."""
    data: dict[str, Any] = msgspec.to_builtins(results)
    return data
