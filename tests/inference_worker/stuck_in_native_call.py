"""A worker stuck in one long native call, with a half-written artifact: SIGTERM's worst case.

Run as `python tests/inference_worker/stuck_in_native_call.py PART_FILE [--watch-stdin]`.
It installs the worker's SIGTERM handling (and with --watch-stdin the worker's stdin
watch, as a warm worker does before loading its model), starts writing PART_FILE the way
artifacts are written, prints "ready", then evaluates a bf16 matrix product that takes
MLX minutes on a CPU (bf16 products use no BLAS there). Python's own SIGTERM handler
cannot run until that native call returns.
"""

import sys
from pathlib import Path

from inference_worker.channel import JobInbox, install_sigterm_handler, removed_if_killed

install_sigterm_handler()
if "--watch-stdin" in sys.argv:
    JobInbox(busy_first=True)
import mlx.core as mx  # noqa: E402  (imported after the handlers, as in the worker)

part = Path(sys.argv[1])
with removed_if_killed(part):
    part.write_bytes(b"half an artifact")
    print("ready", flush=True)
    side = 8192  # two products of 8192^2 bf16 matrices: over 2 TFLOP, minutes at 5 GFLOP/s
    a = mx.ones((side, side), dtype=mx.bfloat16)
    mx.eval(a @ a @ a)
print("the native call returned", flush=True)
