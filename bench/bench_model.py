"""`make bench-model`: the model path at the real SmolVLM2-500M size, on this host. Minutes.

The model is built here, offline, by `python -m inference_worker.tiny_model --size 500m`:
the real architecture and sizes (507.5 M parameters, bf16 as converted checkpoints ship)
with random weights steered to a verdict-length answer, so every call costs what the real
model's would. Figures, each beside a baseline from the same run:

* one highlights segment (4 frames, the segment prompt, the verdict decoded) with the
  worker's CPU-host choices (OpenBLAS under MLX, fp32 weights) against the same call as
  shipped (MLX's own BLAS, bf16: SMOLVLM_CPU_FAST_PATH=0), each in a fresh process;
* the worker's whole run over a 20 s clip against a bare script making the same mlx_vlm
  calls on pre-decoded frames (with the same BLAS and dtype, so the ratio is what the
  pipeline adds or saves), and the vision-tower passes each makes;
* batched judging's best case: one decode step of the language model for 4 segments at
  once (4 rows, each after a segment-sized prompt) against 4 one-row steps. Decode is the
  only part batching can speed up on a CPU (the vision tower and prefill are already
  matrix-matrix work), so this bounds what batching segments could gain here;
* batched judging whole: 4 segments judged in one `generate_batch` call (vision tower,
  prefill and decode) against 4 `generate` calls, each in a fresh process, replies compared.

`python -m bench.bench_model [--model-dir DIR] [--only batching] [--write FILE]`; the table
goes between the bench-model markers of FILE, which `make bench` leaves alone.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The bench process runs the job in-process to record its calls: the fast BLAS must be in
# place before anything imports mlx, as in the worker.
from inference_worker.compute import FAST_PATH_ENV, use_fast_blas

use_fast_blas()

from bench.__main__ import machine_note, render, write_between  # noqa: E402
from bench.bench_worker import record_calls, timed_worker  # noqa: E402
from bench.common import row  # noqa: E402
from inference_worker.tiny_model import build_tiny_model  # noqa: E402
from protocol import AnalysisType, JobSpec  # noqa: E402
from tests.media import write_video  # noqa: E402

CLIP_SECONDS = 20.0
MARKERS = ("<!-- bench-model:start -->", "<!-- bench-model:end -->")

# One segment in a fresh process: load as the worker does, time the full call (vision
# tower, prefill, decode), then the same call with the frames' features kept (no tower).
SEGMENT_SCRIPT = """
import json, sys, time
from inference_worker.compute import use_fast_blas
use_fast_blas()
from inference_worker.highlights import FALLBACK_CRITERIA, VERDICT_TOKENS, segment_prompt
from inference_worker.model import load_model
from inference_worker.video import VideoReader
model = load_model(sys.argv[1])
with VideoReader(sys.argv[2], model.image_size) as reader:
    frames = [frame.image for frame in reader.frames_at([1.25, 3.75, 6.25, 8.75])]
prompt = segment_prompt("A football match in a park: players run, pass and shoot.",
                        FALLBACK_CRITERIA)
started = time.perf_counter()
reply = model.generate(prompt, frames, VERDICT_TOKENS)
segment = time.perf_counter() - started
figures = {"segment": segment, "compute": model.compute, "reply": reply,
           "prompt_tokens": model.last_stats.prompt_tokens,
           "generated": model.last_stats.generation_tokens}
if sys.argv[3] == "split":
    with model.features_kept(frames):
        model.generate(prompt, frames, 1)
        started = time.perf_counter()
        model.generate(prompt, frames, VERDICT_TOKENS)
        figures["without_vision"] = time.perf_counter() - started
print(json.dumps(figures))
"""

# The same mlx_vlm calls the worker made, on the frames it decoded, with the same BLAS and
# dtype; every call runs its frames through the vision tower, as mlx_vlm does by itself.
BARE_SCRIPT = """
import pickle, sys
from inference_worker.compute import cast_for_host, use_fast_blas
use_fast_blas()
import mlx_vlm
from mlx_vlm.prompt_utils import apply_chat_template
calls = pickle.load(open(sys.argv[1], "rb"))
model, processor = mlx_vlm.load(sys.argv[2])
cast_for_host(model)
processor.image_processor.do_image_splitting = False
for prompt, frames, max_tokens in calls:
    formatted = apply_chat_template(processor, model.config, prompt, num_images=len(frames))
    mlx_vlm.generate(model, processor, formatted, image=frames or None,
                     max_tokens=max_tokens, temperature=0.0, verbose=False)
"""


def _python(*args: str, fast: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{FAST_PATH_ENV: "1" if fast else "0"})
    return subprocess.run(
        [sys.executable, *args], check=True, capture_output=True, text=True, env=env
    )


def measure_segment(model_dir: Path, video: Path, fast: bool) -> dict:
    """Seconds for one 4-frame segment call in a fresh process (see SEGMENT_SCRIPT)."""
    mode = "split" if fast else "whole"
    done = _python("-c", SEGMENT_SCRIPT, str(model_dir), str(video), mode, fast=fast)
    return json.loads(done.stdout.splitlines()[-1])


def _vision_passes(events: list) -> int:
    for event in events:
        if event.type == "log" and event.message.endswith("frames through the vision tower"):
            return int(event.message.split()[0])
    raise RuntimeError("the worker did not report its vision passes")


def _model_and_clip(tmp_path: Path, model_dir: Path | None) -> tuple[Path, Path]:
    """The 500m model (`model_dir`, or built under `tmp_path`) and the bench clip."""
    if model_dir is None:
        print("building the 500m model ...", file=sys.stderr, flush=True)
        model_dir = build_tiny_model(tmp_path / "smolvlm2-500m", size="500m")
    video = write_video(tmp_path / "clip.mp4", seconds=CLIP_SECONDS, width=640, height=360, fps=30)
    return model_dir, video


def run(model_dir: Path | None = None) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        tmp_path = Path(tmp)
        model_dir, video = _model_and_clip(tmp_path, model_dir)
        print("one segment, worker's CPU choices ...", file=sys.stderr, flush=True)
        fast = measure_segment(model_dir, video, fast=True)
        print("one segment, as shipped (minutes) ...", file=sys.stderr, flush=True)
        shipped = measure_segment(model_dir, video, fast=False)

        spec = JobSpec(
            session_id="bench-model",
            analysis_type=AnalysisType.HIGHLIGHTS,
            video_path=str(video),
            output_dir=str(tmp_path / "out"),
            model=str(model_dir),
            params={},  # the defaults: 10 s segments of 4 frames
            filename="clip.mp4",
        )
        print("recording the worker's calls (one in-process run) ...", file=sys.stderr)
        calls = record_calls(spec, model_dir)
        calls_file = tmp_path / "calls.pkl"
        calls_file.write_bytes(pickle.dumps(calls))
        print("the worker's whole run ...", file=sys.stderr, flush=True)
        worker_seconds, events = timed_worker(spec)
        print("the bare script ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        _python("-c", BARE_SCRIPT, str(calls_file), str(model_dir))
        bare_seconds = time.perf_counter() - started

    bare_passes = sum(len(frames) for _, frames, _ in calls)
    vision = fast["segment"] - fast["without_vision"]
    per_minute = worker_seconds * 60.0 / CLIP_SECONDS
    return [
        row(
            "500m segment",
            f"one highlights segment: 4 frames, {fast['prompt_tokens']} prompt tokens, "
            f"{fast['generated']} decoded; worker's choice ({fast['compute']})",
            fast["segment"],
            f"as shipped ({shipped['compute']})",
            shipped["segment"],
            "< 30 s",
        ),
        row(
            "500m segment",
            "of which the vision tower (4 frames); the rest is prefill and decode",
            vision,
            "-",
            None,
            "-",
        ),
        row(
            "500m worker run",
            f"highlights of a {CLIP_SECONDS:g} s clip ({len(calls)} model calls), spawn to exit",
            worker_seconds,
            "bare script: same mlx_vlm calls on pre-decoded frames, same BLAS and dtype",
            bare_seconds,
            "<= 1.05x",
        ),
        row(
            "500m worker run",
            "vision-tower passes per job (frames)",
            _vision_passes(events),
            "bare script (the overview frames again in their segments)",
            bare_passes,
            "each frame once",
            unit="frames",
        ),
        row(
            "500m worker run",
            "compute per minute of video, highlights, this host (from the run above)",
            per_minute,
            "-",
            None,
            "-",
        ),
    ]


# One decode step of the 500m language model (fp32, the worker's BLAS) for `rows` prompts
# of PROMPT_TOKENS each at once, best of a few steps.
DECODE_SCRIPT = """
import json, sys, time
from inference_worker.compute import cast_for_host, use_fast_blas
use_fast_blas()
import mlx.core as mx
from mlx_vlm.models import smolvlm
from mlx_vlm.models.cache import make_prompt_cache
from inference_worker.tiny_model import SIZES, _model_config
dims = SIZES["500m"]
config = _model_config(dims, dims.vocab_size, 1, 2)["text_config"]
language = smolvlm.Model(smolvlm.ModelConfig(
    text_config=smolvlm.TextConfig.from_dict(config))).language_model
cast_for_host(language)
mx.eval(language.parameters())
figures = {}
for rows in (1, int(sys.argv[1])):
    cache = make_prompt_cache(language)
    mx.eval(language(mx.ones((rows, int(sys.argv[2])), mx.int32), cache=cache).logits)
    steps = []
    for _ in range(5):
        started = time.perf_counter()
        mx.eval(language(mx.ones((rows, 1), mx.int32), cache=cache).logits)
        steps.append(time.perf_counter() - started)
    figures[rows] = min(steps)
print(json.dumps(figures))
"""
BATCH_ROWS = 4
PROMPT_TOKENS = 400

# Whole segments: BATCH_ROWS segments of the clip (4 frames each, the segment prompt) judged
# one `generate` call each ("sequential") or in one `generate_batch` call ("batched"), after
# a warm-up call on other frames. Each way runs in its own fresh process: in one process,
# whichever way ran second was ~30% faster (157 vs 109 s, then 138 vs 128 s reversed).
# Vision features are computed per segment in both, as in a job.
WHOLE_SEGMENTS_SCRIPT = """
import json, sys, time
from inference_worker.compute import use_fast_blas
use_fast_blas()
from inference_worker.highlights import FALLBACK_CRITERIA, VERDICT_TOKENS, segment_prompt
from inference_worker.model import load_model
from inference_worker.timeline import frame_times
from inference_worker.video import VideoReader
model = load_model(sys.argv[1])
rows, seconds, way = int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
def times(i):
    return frame_times(i * seconds, (i + 1) * seconds, 4)
with VideoReader(sys.argv[2], model.image_size) as reader:
    sets = [[frame.image for frame in reader.frames_at(times(i))] for i in range(rows + 1)]
prompt = segment_prompt("A football match in a park: players run, pass and shoot.",
                        FALLBACK_CRITERIA)
model.generate(prompt, sets[rows], 2)
started = time.perf_counter()
if way == "batched":
    replies = model.generate_batch([prompt] * rows, sets[:rows], VERDICT_TOKENS)
else:
    replies = [model.generate(prompt, frames, VERDICT_TOKENS) for frames in sets[:rows]]
print(json.dumps({"seconds": time.perf_counter() - started, "replies": replies}))
"""


def measure_whole_segments(model_dir: Path, video: Path, way: str) -> dict:
    """Seconds for BATCH_ROWS segments judged `way` ("sequential" or "batched") in a fresh
    process, and the replies."""
    seconds = CLIP_SECONDS / (BATCH_ROWS + 1)
    args = (str(model_dir), str(video), str(BATCH_ROWS), str(seconds), way)
    done = _python("-c", WHOLE_SEGMENTS_SCRIPT, *args)
    return json.loads(done.stdout.splitlines()[-1])


def run_batching(model_dir: Path | None = None) -> list[dict]:
    """Batched judging: one decode step, and whole segments, against one at a time."""
    done = _python("-c", DECODE_SCRIPT, str(BATCH_ROWS), str(PROMPT_TOKENS))
    figures = {int(rows): seconds for rows, seconds in json.loads(done.stdout).items()}
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        model_dir, video = _model_and_clip(Path(tmp), model_dir)
        print(f"{BATCH_ROWS} whole segments, one at a time ...", file=sys.stderr, flush=True)
        sequential = measure_whole_segments(model_dir, video, "sequential")
        print(f"{BATCH_ROWS} whole segments, batched ...", file=sys.stderr, flush=True)
        batched = measure_whole_segments(model_dir, video, "batched")
    if batched["replies"] != sequential["replies"]:
        raise RuntimeError("batched replies differ from one-at-a-time replies")
    return [
        row(
            "500m batched judging",
            f"{BATCH_ROWS} whole segments (vision, prefill, decode) in one generate_batch "
            "call, worker's CPU choices; replies identical",
            batched["seconds"],
            f"{BATCH_ROWS} generate calls",
            sequential["seconds"],
            "< 1x to pay",
        ),
        row(
            "500m batched judging",
            f"decode step for {BATCH_ROWS} segments at once ({PROMPT_TOKENS}-token prompts "
            "in the cache), fp32, worker's BLAS",
            figures[BATCH_ROWS],
            f"{BATCH_ROWS} one-segment steps",
            BATCH_ROWS * figures[1],
            "< 1x to pay",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_model", description=__doc__)
    parser.add_argument("--model-dir", type=Path, help="a 500m build to reuse (else built)")
    parser.add_argument("--only", choices=["batching"], help="run only this part")
    parser.add_argument("--write", metavar="FILE", help="also write the table into FILE")
    args = parser.parse_args(argv)
    rows = run_batching(args.model_dir)
    if not args.only:
        rows = run(args.model_dir) + rows
    table = render(rows, machine_note())
    print(table)
    if args.write:
        write_between(args.write, table, *MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
