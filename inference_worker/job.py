"""One job from JobSpec to its terminal event: probe, sample, analyse, write artifacts.

Progress is shared out by phase so that it rises steadily from 0 to 1: checking the video
and loading the model first, then the analysis (most of the time), then the artifacts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Generator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference_worker.artifacts import write_reel, write_thumbnails
from inference_worker.highlights import analyze_highlights
from inference_worker.judging import Batching, segments_per_call
from inference_worker.judging import describe as describe_batching
from inference_worker.model import ModelUnavailable, SmolVLM, load_model
from inference_worker.prefetch import prefetched
from inference_worker.timeline import (
    Segment,
    SegmentFrames,
    frame_times,
    overview_times,
    plan_segments,
)
from inference_worker.video import UnusableVideo, VideoReader, probe
from inference_worker.workout import analyze_workout
from protocol import (
    AnalysisType,
    Error,
    ErrorCode,
    Event,
    JobResults,
    JobSpec,
    Log,
    LogLevel,
    ParamsError,
    Partial,
    PartialItem,
    PartialKind,
    Progress,
    ReelFile,
    Result,
    VideoInfo,
    WorkerHighlightsResults,
    WorkoutResults,
    results_json,
    validate_params,
)

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("inference_worker")

# Frames shown to the model to describe the whole video before judging segments.
OVERVIEW_FRAMES = 8
REEL_FILE = "reel.mp4"

# Where each phase sits on the 0..1 progress scale.
_LOADED = 0.05  # probe and model load done
_ANALYSED = 0.9  # analysis done; artifacts fill the rest


class ModelSlot:
    """Holds the loaded model across jobs of one process (a warm worker preloads it)."""

    def __init__(self, loader: Callable[[str], SmolVLM] = load_model) -> None:
        self._loader = loader
        self._model: SmolVLM | None = None
        self._source: str | None = None

    def get(self, model: str) -> SmolVLM:
        """The model named `model`, loading it unless it is the one already loaded."""
        if self._model is None or self._source != model:
            self._model = None  # drop the old weights before loading new ones
            self._model = self._loader(model)
            self._source = model
        return self._model


class ProgressReporter:
    """Maps an analysis's own 0..1 progress into a slice of the job's, never going down."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self._last = 0.0
        self._low, self._high = 0.0, 1.0

    def phase(self, low: float, high: float) -> ProgressReporter:
        self._low, self._high = low, high
        return self

    def progress(self, fraction: float, step: str) -> None:
        value = self._low + (self._high - self._low) * min(max(fraction, 0.0), 1.0)
        self._last = max(self._last, round(value, 4))
        self._emit(Progress(self._last, step))

    def partial(self, kind: PartialKind, item: PartialItem) -> None:
        self._emit(Partial(kind, item))


def run_job(spec: JobSpec, emit: Callable[[Event], None], models: ModelSlot) -> Event:
    """Run one job, emitting progress and partial events; return the terminal event."""
    started = time.monotonic()
    reporter = ProgressReporter(emit)
    reporter.progress(0.0, "Checking the video")
    try:
        params = validate_params(spec.analysis_type, spec.params)
        # The server probed the upload already; probe here only when it did not say.
        info = spec.video_info or probe(
            spec.video_path, spec.filename or os.path.basename(spec.video_path)
        )
        reporter.progress(0.02, "Loading the model")
        load_started = time.monotonic()
        model = models.get(spec.model)
        emit(
            Log(
                LogLevel.INFO,
                f"model {model.name} ready in {time.monotonic() - load_started:.2f} s "
                f"({model.compute})",
            )
        )
        reporter.progress(_LOADED, "Model loaded")
        output_dir = Path(spec.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        encoded_before = model.frames_encoded
        totals_before = dataclasses.replace(model.totals)
        size, why = segments_per_call(model.on_gpu)
        emit(Log(LogLevel.INFO, describe_batching(size, why)))
        batching = Batching(model.generate_batch, size) if size > 1 else None
        # What the results start with; the analysis adds its own fields.
        common = _Common(model.name, info, started)
        results: JobResults
        if spec.analysis_type is AnalysisType.HIGHLIGHTS:
            results = _highlights(spec, info, params, model, batching, output_dir, reporter, common)
        else:
            results = _workout(spec, info, params, model, batching, reporter, common)
        emit(
            Log(
                LogLevel.INFO,
                f"{model.frames_encoded - encoded_before} frames through the vision tower",
            )
        )
        emit(Log(LogLevel.INFO, model.totals.since(totals_before)))
    except ParamsError as exc:
        return Error(ErrorCode.INVALID_PARAMS.value, str(exc))
    except UnusableVideo as exc:
        return Error(ErrorCode.INVALID_VIDEO.value, str(exc))
    except ModelUnavailable as exc:
        return Error(ErrorCode.MODEL_UNAVAILABLE.value, str(exc))
    except Exception as exc:  # the job fails; the traceback goes to stderr, not to clients
        log.exception("job %s failed", spec.session_id)
        return Error(ErrorCode.INTERNAL_ERROR.value, f"analysis failed ({type(exc).__name__})")
    reporter.progress(1.0, "Finished")
    return Result(results_json(results))


@dataclasses.dataclass(frozen=True)
class _Common:
    """The fields both analyses' results start with, known before the analysis runs."""

    model: str
    info: VideoInfo
    started: float  # time.monotonic() when the job began

    def fields(self) -> dict[str, Any]:
        # Measured here, as the results are made: the artifacts' time counts too.
        return {
            "processing_time_seconds": round(time.monotonic() - self.started, 2),
            "model": self.model,
            "video": self.info.public(),
        }


def _segment_frames(
    reader: VideoReader,
    info: VideoInfo,
    params: dict[str, Any],
    batching: Batching | None,
    decoded: dict[float, Image.Image] | None = None,
) -> tuple[int, Generator[SegmentFrames, None, None]]:
    """The segment count, and their frames decoded one segment (one batch) ahead of the model.

    Frames already in `decoded` (by time) are used as they are, not decoded again.
    """
    segments = plan_segments(info.duration_seconds, params["segment_seconds"])
    known = decoded or {}

    def decode(segment: Segment) -> SegmentFrames:
        times = frame_times(segment.start, segment.end, params["frames_per_segment"])
        missing = [time for time in times if time not in known]
        images = [frame.image for frame in reader.frames_at(missing)]
        fresh = dict(zip(missing, images, strict=True))
        return SegmentFrames(segment, [known[t] if t in known else fresh[t] for t in times])

    ahead = batching.size if batching is not None else 1
    return len(segments), prefetched(decode, segments, ahead)


def _overview_frames(
    spec: JobSpec, info: VideoInfo, params: dict[str, Any], size: int
) -> dict[float, Image.Image]:
    """The describe step's frames, by time: OVERVIEW_FRAMES of the segments' own frames."""
    segments = plan_segments(info.duration_seconds, params["segment_seconds"])
    times = overview_times(
        [frame_times(s.start, s.end, params["frames_per_segment"]) for s in segments],
        OVERVIEW_FRAMES,
    )
    with VideoReader(spec.video_path, size) as reader:
        images = [frame.image for frame in reader.frames_at(times)]
    return dict(zip(times, images, strict=True))


def _highlights(
    spec: JobSpec,
    info: VideoInfo,
    params: dict[str, Any],
    model: SmolVLM,
    batching: Batching | None,
    output_dir: Path,
    reporter: ProgressReporter,
    common: _Common,
) -> WorkerHighlightsResults:
    overview = _overview_frames(spec, info, params, model.image_size)
    with VideoReader(spec.video_path, model.image_size) as reader:
        count, segments = _segment_frames(reader, info, params, batching, decoded=overview)
        # closing: stops the decode-ahead thread with the job. The overview frames come
        # back in their segments: their vision features are computed once, then reused.
        with closing(segments), model.features_kept(list(overview.values())):
            analysis = analyze_highlights(
                model.generate,
                list(overview.values()),
                segments,
                count,
                params,
                reporter.phase(_LOADED, _ANALYSED),
                batching=batching,
            )
    highlights = analysis.highlights
    reporter.phase(_ANALYSED, 1.0).progress(0.0, "Writing thumbnails")
    thumbnails = write_thumbnails(
        spec.video_path, [(h.start + h.end) / 2 for h in highlights], output_dir
    )
    reel = None
    if params["make_reel"] and highlights:
        reporter.progress(0.3, "Writing the highlight reel")
        duration = write_reel(
            spec.video_path,
            [(h.start, h.end) for h in highlights],
            output_dir,
            REEL_FILE,
            info=info,
        )
        reel = ReelFile(file=REEL_FILE, duration_seconds=round(duration, 2))
    return WorkerHighlightsResults(
        **common.fields(),
        video_description=analysis.video_description,
        criteria=analysis.criteria,
        timeline=[entry.item() for entry in analysis.timeline],
        highlights_found=len(highlights),
        highlights=[h.with_thumbnail(name) for h, name in zip(highlights, thumbnails, strict=True)],
        reel=reel,
    )


def _workout(
    spec: JobSpec,
    info: VideoInfo,
    params: dict[str, Any],
    model: SmolVLM,
    batching: Batching | None,
    reporter: ProgressReporter,
    common: _Common,
) -> WorkoutResults:
    with VideoReader(spec.video_path, model.image_size) as reader:
        count, segments = _segment_frames(reader, info, params, batching)
        with closing(segments):  # stops the decode-ahead thread with the job
            analysis = analyze_workout(
                model.generate,
                segments,
                count,
                params,
                reporter.phase(_LOADED, 1.0),
                batching=batching,
            )
    return WorkoutResults(
        **common.fields(),
        segments=[segment.item() for segment in analysis.segments],
        summary=analysis.summary(),
    )
