"""The worker's whole run against a bare script making the same mlx_vlm calls on the same frames.

Both sides are fresh processes timed from spawn to exit, so both pay Python's start and
`import mlx_vlm`. The bare script gets the frames already decoded and the exact prompts the
worker used (recorded from an in-process run), and calls mlx_vlm directly: what the worker
adds on top is probing, decoding, parsing, artifacts and the event channel. Decoding runs
ahead of the model in a background thread, so the goal is a small overhead, not zero.

The model is the tiny random-weight SmolVLM2 (the only one this machine can have): its
calls are fast, so the video work weighs more here than it would with the real 500M model.
"""

from __future__ import annotations

import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import row
from inference_worker.job import ModelSlot, run_job
from inference_worker.model import load_model
from inference_worker.tiny_model import build_tiny_model
from protocol import AnalysisType, JobSpec, decode_event, encode_job
from tests.media import write_video

REPEATS = 3

BARE_SCRIPT = """
import pickle, sys
import mlx_vlm
from mlx_vlm.prompt_utils import apply_chat_template
calls = pickle.load(open(sys.argv[1], "rb"))
model, processor = mlx_vlm.load(sys.argv[2])
processor.image_processor.do_image_splitting = False
for prompt, frames, max_tokens in calls:
    formatted = apply_chat_template(processor, model.config, prompt, num_images=len(frames))
    mlx_vlm.generate(model, processor, formatted, image=frames or None,
                     max_tokens=max_tokens, temperature=0.0, verbose=False)
"""


def record_calls(spec: JobSpec, model_dir: Path) -> list[tuple]:
    """Run the job in-process once, keeping every (prompt, frames, max_tokens) it asked for."""
    calls: list[tuple] = []

    def recording_loader(name: str):
        model = load_model(name)
        real_generate = model.generate

        def generate(prompt, frames, max_tokens):
            calls.append((prompt, [frame.copy() for frame in frames], max_tokens))
            return real_generate(prompt, frames, max_tokens)

        model.generate = generate
        return model

    terminal = run_job(spec, lambda event: None, ModelSlot(recording_loader))
    if terminal.type != "result":
        raise RuntimeError(f"the recorded run failed: {terminal}")
    return calls


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def timed_worker(spec: JobSpec) -> tuple[float, list]:
    """Spawn to exit of a worker fed as the server feeds it (stdin stays open: EOF means
    stop); the seconds and the events it printed."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    proc.stdin.write(encode_job(spec))
    proc.stdin.flush()
    output = proc.stdout.read()
    proc.wait()
    elapsed = time.perf_counter() - started
    proc.stdin.close()
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {output[-500:]}")
    return elapsed, [decode_event(line) for line in output.splitlines()]


def run(quick: bool = False) -> list[dict]:
    seconds = 20.0 if quick else 60.0
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        tmp_path = Path(tmp)
        model_dir = build_tiny_model(tmp_path / "model")
        video = write_video(tmp_path / "clip.mp4", seconds=seconds, width=640, height=360, fps=30)
        spec = JobSpec(
            session_id="bench",
            analysis_type=AnalysisType.HIGHLIGHTS,
            video_path=str(video),
            output_dir=str(tmp_path / "out"),
            model=str(model_dir),
            params={"segment_seconds": 5},
            filename="clip.mp4",
        )
        calls = record_calls(spec, model_dir)
        calls_file = tmp_path / "calls.pkl"
        calls_file.write_bytes(pickle.dumps(calls))
        bare = [sys.executable, "-c", BARE_SCRIPT, str(calls_file), str(model_dir)]
        worker_times, bare_times = [], []
        for _ in range(REPEATS):  # interleaved, so drift on the machine hits both alike
            worker_times.append(timed_worker(spec)[0])
            bare_times.append(timed(bare))
    frames = sum(len(frames) for _, frames, _ in calls)
    return [
        row(
            "worker run",
            f"highlights of a {seconds:g} s 360p clip: {len(calls)} model calls, {frames} frames "
            "(tiny model), process spawn to exit, median of 3",
            statistics.median(worker_times),
            "bare script: same mlx_vlm calls on pre-decoded frames",
            statistics.median(bare_times),
            "< 1.25x",
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
