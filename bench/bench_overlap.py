"""Decode-ahead: a job with decoding overlapped with the model, against one after the other.

The same workout analysis runs twice on the same 720p clip with the tiny model: once
with the worker's `prefetched` (the next segment's frames decode in a background thread
while the model judges the current one), once with a plain generator (decode, then
judge, in turn). Decoding alone and the model alone are timed too, so the overlapped
run can be read against max(decode, model) and the sequential one against their sum.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import best_of, row
from inference_worker.model import load_model
from inference_worker.prefetch import prefetched
from inference_worker.reporting import Reporter
from inference_worker.timeline import SegmentFrames, frame_times, plan_segments
from inference_worker.tiny_model import build_tiny_model
from inference_worker.video import VideoReader
from inference_worker.workout import analyze_workout
from protocol import PartialItem, PartialKind
from tests.media import write_video

FRAMES_PER_SEGMENT = 8
SEGMENT_SECONDS = 2.0
REPEATS = 3


class Silent(Reporter):
    def progress(self, fraction: float, step: str) -> None:
        pass

    def partial(self, kind: PartialKind, item: PartialItem) -> None:
        pass


def run(quick: bool = False) -> list[dict]:
    seconds = 12.0 if quick else 30.0
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        tmp_path = Path(tmp)
        model = load_model(str(build_tiny_model(tmp_path / "model")))
        clip = write_video(
            tmp_path / "clip.mp4", seconds=seconds, width=1280, height=720, fps=30, gop=60, grain=16
        )
        segments = plan_segments(seconds, SEGMENT_SECONDS)
        params = {"segment_seconds": SEGMENT_SECONDS, "exercise_hint": None}

        def frames_of(reader: VideoReader):
            def decode(segment) -> SegmentFrames:
                times = frame_times(segment.start, segment.end, FRAMES_PER_SEGMENT)
                return SegmentFrames(segment, [f.image for f in reader.frames_at(times)])

            return decode

        def analyse(overlap: bool) -> None:
            with VideoReader(clip, model.image_size) as reader:
                decode = frames_of(reader)
                stream: Iterator[SegmentFrames] = (
                    prefetched(decode, segments) if overlap else map(decode, segments)
                )
                analyze_workout(model.generate, stream, len(segments), params, Silent())

        def decode_only() -> list[SegmentFrames]:
            with VideoReader(clip, model.image_size) as reader:
                return list(map(frames_of(reader), segments))

        decoded = decode_only()

        def model_only() -> None:
            analyze_workout(model.generate, iter(decoded), len(segments), params, Silent())

        analyse(True)  # warm-up: first MLX calls and file cache
        decoding = best_of(REPEATS, decode_only)
        modelling = best_of(REPEATS, model_only)
        sequential = best_of(REPEATS, lambda: analyse(False))
        overlapped = best_of(REPEATS, lambda: analyse(True))
    figure = (
        f"workout job, {len(segments)} segments x {FRAMES_PER_SEGMENT} frames of 720p, tiny model "
        f"(decode alone {decoding:.2f} s, model alone {modelling:.2f} s)"
    )
    return [
        row(
            "decode/model overlap",
            figure,
            overlapped,
            "decode then model, in turn",
            sequential,
            f"< 1x, near max/sum = {max(decoding, modelling) / (decoding + modelling):.2f}x",
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
