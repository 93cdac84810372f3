"""The CPU fast path, chosen by the worker itself: an optimised BLAS under MLX, fp32
weights, and the vision encoder and text model in numpy (cpu_kernels)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inference_worker.compute import FAST_PATH_ENV, cast_for_host
from tests.inference_worker.worker_runner import REPO, worker_env

# Loads the model the way the worker does (BLAS chosen before mlx is imported), then
# answers a few prompts about frames and prints the replies and what it chose.
_ANSWER_SCRIPT = """
import json, sys
from inference_worker.compute import use_fast_blas
use_fast_blas()
from PIL import Image
from inference_worker.model import load_model
model = load_model(sys.argv[1])
frames = [Image.new("RGB", (96, 72), (50 * i, 120, 255 - 40 * i)) for i in range(4)]
replies = [
    model.generate("Describe the video.", frames, 24),
    model.generate("How significant is this part?", frames[:2], 24),
    model.generate("List highlights.", [], 24),
]
print(json.dumps({"replies": replies, "compute": model.compute}))
"""


def _answers(model_dir, path: str) -> dict:
    env = worker_env()
    env[FAST_PATH_ENV] = path
    done = subprocess.run(
        [sys.executable, "-c", _ANSWER_SCRIPT, str(model_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_the_three_cpu_paths_give_identical_greedy_answers(tiny_model_dir):
    fast = _answers(tiny_model_dir, "1")  # the default
    blas_only = _answers(tiny_model_dir, "blas")
    shipped = _answers(tiny_model_dir, "0")

    assert fast["replies"] == blas_only["replies"] == shipped["replies"]
    assert all(reply for reply in fast["replies"])
    # On this Linux CPU host each path really is different, and says so.
    assert "vision encoder and text model in numpy on" in fast["compute"]
    assert "BLAS: OpenBLAS" in fast["compute"] and "BLAS: OpenBLAS" in blas_only["compute"]
    assert "numpy" not in blas_only["compute"] and "numpy" not in shipped["compute"]
    assert f"BLAS: MLX's own BLAS ({FAST_PATH_ENV}=0)" in shipped["compute"]


def test_bf16_weights_become_fp32_on_the_cpu():
    import mlx.core as mx
    import mlx.nn as nn

    layer = nn.Linear(8, 4)
    layer.set_dtype(mx.bfloat16)

    said = cast_for_host(layer)

    assert said == "CPU, float32 weights (cast from bfloat16: only fp32 products use BLAS)"
    assert layer.weight.dtype == mx.float32 and layer.bias.dtype == mx.float32


def test_fp32_weights_and_the_turned_off_fast_path_are_left_as_shipped(monkeypatch):
    import mlx.core as mx
    import mlx.nn as nn

    layer = nn.Linear(8, 4)
    assert cast_for_host(layer) == "CPU, float32 weights as shipped"

    layer.set_dtype(mx.bfloat16)
    monkeypatch.setenv(FAST_PATH_ENV, "0")
    assert cast_for_host(layer) == "CPU, bfloat16 weights as shipped"
    assert layer.weight.dtype == mx.bfloat16
