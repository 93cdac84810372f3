"""`make bench-model`: the model path at the real SmolVLM2-500M size, on this host. Minutes.

The model is built here, offline, by `python -m inference_worker.tiny_model --size 500m`:
the real architecture and sizes (507.5 M parameters, bf16 as converted checkpoints ship)
with random weights steered to a verdict-length answer, so every call costs what the real
model's would. On a CPU-only host the worker runs the vision encoder and the text model in
numpy (inference_worker/cpu_kernels.py); "before" is the path it had until then, MLX's own
kernels over the fast BLAS with fp32 weights (SMOLVLM_CPU_FAST_PATH=blas). Figures, each
beside a baseline from the same run:

* the vision tower per frame (4 frames at once, as a segment shows them), the prefill of
  a segment-sized prompt and one decode step, each against its floor: the time this
  host's BLAS (numpy's OpenBLAS, every core) takes for the same matrix products, all
  of them (a decode step's products read every weight once), and against "before";
* one highlights segment (4 frames, the segment prompt, the verdict decoded) after and
  before, each in a fresh process; the replies must be token-identical;
* the worker's whole run, spawn to exit, over a 60 s clip with default params, for
  highlights and for workout, after and before; the results must be the same;
* two jobs sharing the cores (MAX_CONCURRENT_JOBS=2): a segment each at once, with
  OPENBLAS_NUM_THREADS=1 against the default of every core, and one job alone.

`python -m bench.bench_model [--model-dir DIR] [--only parts|threads] [--write FILE]`; the
table goes between the bench-model markers of FILE, which `make bench` leaves alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.__main__ import machine_note, render, write_between
from bench.bench_worker import timed_worker
from bench.common import row
from inference_worker.compute import FAST_PATH_ENV
from inference_worker.tiny_model import build_tiny_model
from protocol import AnalysisType, JobSpec
from tests.media import write_video

CLIP_SECONDS = 60.0
SEGMENT_CLIP_SECONDS = 10.0
MARKERS = ("<!-- bench-model:start -->", "<!-- bench-model:end -->")
AFTER, BEFORE = "1", "blas"  # SMOLVLM_CPU_FAST_PATH: numpy kernels, MLX's own kernels
PROMPT_TOKENS = 560  # a highlights segment's prompt: 4 frames of 67 tokens and its text

# The tower, a prefill and decode steps as the worker loads the model, in a fresh process;
# with `floors`, also the same matrix products through numpy's BLAS.
PARTS_SCRIPT = """
import json, sys, time
from inference_worker.compute import use_fast_blas
use_fast_blas()
import mlx.core as mx
import numpy as np
from mlx_vlm.models.cache import make_prompt_cache
from inference_worker.model import load_model
model = load_model(sys.argv[1])._model
frames, tokens = 4, int(sys.argv[2])

def best(run, times=2):
    run()
    spans = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        spans.append(time.perf_counter() - started)
    return min(spans)

vision = model.vision_model
patches, width = vision.embeddings.num_patches, vision.embeddings.embed_dim
x = mx.random.normal((frames, patches, width))
mx.eval(x)
tower = best(lambda: mx.eval(vision.encoder(x)[0])) / frames
language = model.language_model
ids = mx.array(np.random.default_rng(0).integers(10, 40000, (1, tokens)), dtype=mx.int32)
state = {}
def prefill():
    state["cache"] = make_prompt_cache(language)
    mx.eval(language(ids, cache=state["cache"]).logits)
prefill_seconds = best(prefill)
token = mx.array([[5]], dtype=mx.int32)
decode = best(lambda: mx.eval(language(token, cache=state["cache"]).logits), times=5)
figures = {"tower": tower, "prefill": prefill_seconds, "decode": decode}

if sys.argv[3] == "floors":
    # The worker holds OpenBLAS to one thread per call (its own threads share the cores);
    # the floor is OpenBLAS on every core.
    import os, threadpoolctl
    threadpoolctl.threadpool_limits(limits=len(os.sched_getaffinity(0)), user_api="blas")
    rng = np.random.default_rng(1)
    def matrix(*shape):
        return rng.standard_normal(shape, dtype=np.float32)
    def products(pairs, repeat):
        outs = [np.empty((a.shape[0], b.shape[1]), np.float32) for a, b in pairs]
        def run():
            for _ in range(repeat):
                for (a, b), out in zip(pairs, outs):
                    np.matmul(a, b, out=out)
        return best(run)
    # The tower: 12 layers; per layer the projections for 4 frames at once, and per frame
    # and head q k^T and (softmax) v: 12 heads of 64.
    rows = frames * patches
    per_layer = [(matrix(rows, 768), matrix(768, 2304)), (matrix(rows, 768), matrix(768, 768)),
                 (matrix(rows, 768), matrix(768, 3072)), (matrix(rows, 3072), matrix(3072, 768))]
    q, k = matrix(patches, 64), matrix(64, patches)
    p, v = matrix(patches, patches), matrix(patches, 64)
    heads = [(q, k), (p, v)] * (12 * frames)
    figures["tower_floor"] = (products(per_layer, 12) + products(heads, 12)) / frames
    # The prefill: 32 layers of q, k, v, o, gate, up, down; 15 query heads of 64 over the
    # prompt (grouped keys change no product's size); the logits of every position.
    n = tokens
    per_layer = [(matrix(n, 960), matrix(960, 960)), (matrix(n, 960), matrix(960, 320)),
                 (matrix(n, 960), matrix(960, 320)), (matrix(n, 960), matrix(960, 960)),
                 (matrix(n, 960), matrix(960, 2560)), (matrix(n, 960), matrix(960, 2560)),
                 (matrix(n, 2560), matrix(2560, 960))]
    heads = [(matrix(n, 64), matrix(64, n)), (matrix(n, n), matrix(n, 64))] * 15
    head = [(matrix(n, 960), matrix(960, 49280))]
    figures["prefill_floor"] = products(per_layer, 32) + products(heads, 32) + products(head, 1)
    # A decode step: every weight read once (32 layers' own matrices, and the logits').
    shapes = [(960, 960), (960, 320), (960, 320), (960, 960), (960, 2560), (960, 2560),
              (2560, 960)]
    weights = [matrix(*shape) for _ in range(32) for shape in shapes]
    weights.append(matrix(960, 49280))
    vectors = {size: matrix(1, size) for size in (960, 2560)}
    figures["decode_floor"] = products([(vectors[w.shape[0]], w) for w in weights], 1)
print(json.dumps(figures))
"""

# One segment in a fresh process, loaded as the worker loads it: seconds and the reply.
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
print(json.dumps({"seconds": time.perf_counter() - started, "reply": reply,
                  "compute": model.compute, "prompt_tokens": model.last_stats.prompt_tokens,
                  "generated": model.last_stats.generation_tokens}))
"""


def _python(script: str, *args: str, path: str, **env: str) -> dict:
    """Run `script` in a fresh interpreter on CPU path `path`; its last line, as JSON."""
    environment = dict(os.environ, **{FAST_PATH_ENV: path}, **env)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
    )
    return json.loads(done.stdout.splitlines()[-1])


def _model_and_clips(tmp_path: Path, model_dir: Path | None) -> tuple[Path, Path, Path]:
    """The 500m model (`model_dir`, or built under `tmp_path`), a segment's clip and the
    60 s clip."""
    if model_dir is None:
        print("building the 500m model ...", file=sys.stderr, flush=True)
        model_dir = build_tiny_model(tmp_path / "smolvlm2-500m", size="500m")
    segment = write_video(
        tmp_path / "segment.mp4", seconds=SEGMENT_CLIP_SECONDS, width=640, height=360
    )
    clip = write_video(tmp_path / "clip.mp4", seconds=CLIP_SECONDS, width=640, height=360, fps=30)
    return model_dir, segment, clip


def _say(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what} ...", file=sys.stderr, flush=True)


def run_parts(model_dir: Path, segment: Path) -> list[dict]:
    """The tower, the prefill and a decode step against their floors and before; a segment."""
    _say("tower, prefill, decode and their floors (numpy kernels)")
    after = _python(PARTS_SCRIPT, str(model_dir), str(PROMPT_TOKENS), "floors", path=AFTER)
    _say("tower, prefill, decode (MLX's kernels)")
    before = _python(PARTS_SCRIPT, str(model_dir), str(PROMPT_TOKENS), "-", path=BEFORE)
    _say("one segment, numpy kernels")
    segment_after = _python(SEGMENT_SCRIPT, str(model_dir), str(segment), path=AFTER)
    _say("one segment, MLX's kernels")
    segment_before = _python(SEGMENT_SCRIPT, str(model_dir), str(segment), path=BEFORE)
    if segment_after["reply"] != segment_before["reply"]:
        raise RuntimeError(
            f"the replies differ: {segment_after['reply']!r} against {segment_before['reply']!r}"
        )
    floor = "floor: the same matrix products through this host's BLAS (numpy's OpenBLAS)"
    rows = []
    for part, figure in (
        ("tower", "vision tower per frame (4 frames at once), numpy kernels"),
        ("prefill", f"prefill of a {PROMPT_TOKENS}-token prompt, numpy kernels"),
        ("decode", "one decode step (a prompt's keys cached), numpy kernels"),
    ):
        goal = "-" if part == "decode" else "<= 1.5x"  # a decode step is bound by memory
        rows.append(row("500m " + part, figure, after[part], floor, after[f"{part}_floor"], goal))
        rows.append(
            row("500m " + part, figure, after[part], "before: MLX's kernels", before[part], "< 1x")
        )
    rows.append(
        row(
            "500m segment",
            f"one highlights segment: 4 frames, {segment_after['prompt_tokens']} prompt tokens, "
            f"{segment_after['generated']} decoded; replies token-identical "
            f"({segment_after['reply']!r}); numpy kernels",
            segment_after["seconds"],
            "before: MLX's kernels",
            segment_before["seconds"],
            "< 1x",
        )
    )
    return rows


def _job(kind: AnalysisType, clip: Path, model_dir: Path, out: Path, path: str) -> tuple:
    spec = JobSpec(
        session_id=f"bench-{kind.value}",
        analysis_type=kind,
        video_path=str(clip),
        output_dir=str(out),
        model=str(model_dir),
        params={},  # the defaults: 10 s segments of 4 frames
        filename="clip.mp4",
    )
    previous = os.environ.get(FAST_PATH_ENV)
    os.environ[FAST_PATH_ENV] = path  # timed_worker's worker inherits this environment
    try:
        return timed_worker(spec)
    finally:
        if previous is None:
            del os.environ[FAST_PATH_ENV]
        else:
            os.environ[FAST_PATH_ENV] = previous


def _analysis(events: list) -> dict:
    """What a run found (its results but for timings and paths), to compare two runs."""
    results = next(event.results for event in events if event.type == "result")
    drop = {"processing_time_seconds", "thumbnail", "thumbnails", "reel", "artifacts"}

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if key not in drop}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value

    return strip(results)


def _vision_passes(events: list) -> int:
    for event in events:
        if event.type == "log" and event.message.endswith("frames through the vision tower"):
            return int(event.message.split()[0])
    raise RuntimeError("the worker did not report its vision passes")


def run_jobs(model_dir: Path, clip: Path, tmp_path: Path) -> list[dict]:
    """The worker's whole run over the 60 s clip, after and before, both analyses."""
    rows = []
    for kind in (AnalysisType.HIGHLIGHTS, AnalysisType.WORKOUT):
        runs = {}
        for path in (AFTER, BEFORE):
            _say(f"{kind.value} of a {CLIP_SECONDS:g} s clip, {FAST_PATH_ENV}={path}")
            runs[path] = _job(kind, clip, model_dir, tmp_path / f"{kind.value}-{path}", path)
        (seconds, events), (before, before_events) = runs[AFTER], runs[BEFORE]
        if _analysis(events) != _analysis(before_events):
            raise RuntimeError(f"{kind.value}: the two paths found different things")
        rows.append(
            row(
                "500m worker run",
                f"{kind.value} of a {CLIP_SECONDS:g} s clip, default params, spawn to exit "
                f"(model load included; {_vision_passes(events)} frames through the tower); "
                "same results; numpy kernels",
                seconds,
                "before: MLX's kernels",
                before,
                "<= 100 s",
            )
        )
    return rows


def run_threads(model_dir: Path, segment: Path) -> list[dict]:
    """Two segments at once in two workers (MAX_CONCURRENT_JOBS=2), by thread setting."""

    def pair(threads: str | None) -> float:
        env = {"OPENBLAS_NUM_THREADS": threads} if threads else {}
        started = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            runs = [
                pool.submit(
                    _python, SEGMENT_SCRIPT, str(model_dir), str(segment), path=AFTER, **env
                )
                for _ in range(2)
            ]
            for run in runs:
                run.result()
        return time.perf_counter() - started

    def alone(threads: str | None) -> float:
        env = {"OPENBLAS_NUM_THREADS": threads} if threads else {}
        started = time.perf_counter()
        _python(SEGMENT_SCRIPT, str(model_dir), str(segment), path=AFTER, **env)
        return time.perf_counter() - started

    _say("one job alone, every core (a fresh process: load and one segment)")
    alone_every_core = alone(None)
    _say("one job alone, OPENBLAS_NUM_THREADS=1")
    alone_one_thread = alone("1")
    _say("two jobs at once, OPENBLAS_NUM_THREADS=1 each")
    one_each = pair("1")
    _say("two jobs at once, every core each")
    every_core = pair(None)
    figure = "2 jobs at once (2 workers: load and one segment each), wall time for both"
    return [
        row(
            "500m sharing cores",
            f"{figure}, OPENBLAS_NUM_THREADS=1",
            one_each,
            "the same, OPENBLAS_NUM_THREADS unset (every core each)",
            every_core,
            "-",
        ),
        row(
            "500m sharing cores",
            f"{figure}, OPENBLAS_NUM_THREADS=1",
            one_each,
            "2 x one job alone, every core (one after the other)",
            2 * alone_every_core,
            "< 1x: 2 jobs pay",
        ),
        row(
            "500m sharing cores",
            "one job alone (load and one segment), OPENBLAS_NUM_THREADS=1",
            alone_one_thread,
            "the same, every core",
            alone_every_core,
            "> 1x: what 1 thread costs a lone job",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_model", description=__doc__)
    parser.add_argument("--model-dir", type=Path, help="a 500m build to reuse (else built)")
    parser.add_argument("--only", choices=["parts", "threads"], help="run only this part")
    parser.add_argument("--write", metavar="FILE", help="also write the table into FILE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        tmp_path = Path(tmp)
        model_dir, segment, clip = _model_and_clips(tmp_path, args.model_dir)
        rows = []
        if args.only in (None, "parts"):
            rows += run_parts(model_dir, segment)
        if args.only is None:
            rows += run_jobs(model_dir, clip, tmp_path)
        if args.only in (None, "threads"):
            rows += run_threads(model_dir, segment)
    table = render(rows, machine_note())
    print(table)
    if args.write:
        write_between(args.write, table, *MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
