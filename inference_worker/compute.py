"""What runs differently on a host without a GPU, and why: the one place that decides.

On Apple silicon (Metal, Accelerate) and CUDA hosts nothing changes: mlx_vlm's MLX model
runs as shipped, bf16 weights. On a CPU-only Linux host with the `mlx[cpu]` wheel, measured
on 2 x86 cores at the real SmolVLM2-500M size (docs/BENCHMARKS.md, `make bench-model`):

1. `use_fast_blas`: that wheel links the reference BLAS (about 6 GFLOP/s for an fp32
   matrix product) and multiplies bf16 with no BLAS at all (about 5 GFLOP/s). Before MLX
   is imported, the worker loads an OpenBLAS that exports the plain `cblas_*` names into
   the global symbol scope, so that MLX's calls resolve to it (about 150 GFLOP/s). It
   comes from the opencv-python wheel (a dependency of mlx-vlm, listed in setup.cfg for
   this reason); numpy's and scipy's OpenBLAS export only prefixed names.
2. `adapt_for_host`: the vision encoder and the text model past its token embeddings run
   in numpy (`inference_worker.cpu_kernels`), because MLX's x86 CPU kernels for softmax,
   exp, erf and every elementwise op are scalar code on one core (a frame's softmax in
   one tower layer: 0.32 s in MLX, 0.02 s in numpy), every MLX evaluation costs about
   0.5 ms, and the OpenBLAS under MLX (0.3.15) takes one-row products as full matrix
   products (a decode step's: 143 ms, numpy's OpenBLAS 0.3.31 60 ms). A segment went from
   30 s to 11 s; the tower runs within 1.5x of what its matrix products alone take.
3. `cast_for_host`: what stays in MLX (embeddings, the connector) gets fp32 weights: only
   fp32 products use BLAS.

Threads: the numpy kernels use OPENBLAS_NUM_THREADS threads if it is set, else every core
the process may run on (`compute_threads`). SMOLVLM_CPU_FAST_PATH compares the paths.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import logging
import os
import site
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    # Only for annotations: MLX may be imported only after use_fast_blas has run.
    from mlx import nn

log = logging.getLogger("inference_worker")

# For comparing paths (bench-model, tests), never needed in normal use:
# SMOLVLM_CPU_FAST_PATH=0 keeps MLX as shipped (its own BLAS, the shipped dtype);
# SMOLVLM_CPU_FAST_PATH=blas keeps MLX's own kernels over the fast BLAS and fp32 weights.
FAST_PATH_ENV = "SMOLVLM_CPU_FAST_PATH"
# Where wheels keep bundled libraries: <site-packages>/<project>.libs/.
_BUNDLED_OPENBLAS = "*.libs/libopenblas*.so*"
_CUDA_BACKENDS = ("mlx-cuda", "mlx-cuda-12", "mlx-cuda-13")


@dataclass(frozen=True)
class BlasChoice:
    """What `use_fast_blas` did: the library loaded (None: MLX's own), and why."""

    library: str | None
    reason: str

    def describe(self) -> str:
        """For the worker's log: which BLAS, with how many threads now, and why."""
        if self.library is None:
            return f"MLX's own BLAS ({self.reason})"
        import threadpoolctl  # after MLX has loaded the library, as this is

        threads = next(
            (
                info["num_threads"]
                for info in threadpoolctl.threadpool_info()
                if os.path.realpath(info["filepath"]) == os.path.realpath(self.library)
            ),
            None,
        )
        said = "1 thread per call" if threads == 1 else f"{threads or 'all'} threads"
        return f"OpenBLAS {os.path.basename(self.library)} ({said}; {self.reason})"


_choice: BlasChoice | None = None


def use_fast_blas() -> BlasChoice:
    """On a Linux CPU-only MLX, make MLX's BLAS calls go to an optimised OpenBLAS.

    Must run before `mlx` is imported (the symbols are bound when MLX's library loads);
    later calls return the first call's choice. Never raises: without a usable OpenBLAS,
    MLX keeps its own.
    """
    global _choice
    if _choice is None:
        _choice = _choose_blas()
        log.debug("BLAS: %s", _choice.describe())
    return _choice


def fast_path_enabled() -> bool:
    """False when SMOLVLM_CPU_FAST_PATH=0 asks for MLX as shipped."""
    return os.environ.get(FAST_PATH_ENV, "1") != "0"


def numpy_kernels_enabled() -> bool:
    """False when SMOLVLM_CPU_FAST_PATH is 0 or `blas` (MLX's own softmax and GELU)."""
    return os.environ.get(FAST_PATH_ENV, "1") not in ("0", "blas")


def compute_threads() -> int:
    """Threads for the numpy kernels: OPENBLAS_NUM_THREADS if set (one knob for both),
    else the cores this process may run on."""
    try:
        return max(1, int(os.environ.get("OPENBLAS_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)))


def _choose_blas() -> BlasChoice:
    if not fast_path_enabled():
        return BlasChoice(None, f"{FAST_PATH_ENV}=0")
    if not sys.platform.startswith("linux"):
        return BlasChoice(None, "not Linux: MLX uses the platform's BLAS")
    if _installed(*_CUDA_BACKENDS):
        return BlasChoice(None, "CUDA backend installed: left as shipped")
    if "mlx.core" in sys.modules:
        return BlasChoice(None, "mlx was imported before the worker could choose")
    for path in sorted(_bundled_openblas()):
        try:
            library = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        if hasattr(library, "cblas_sgemm"):
            return BlasChoice(path, "CPU-only MLX")
    return BlasChoice(None, "no OpenBLAS with plain cblas_* names is installed")


def _installed(*names: str) -> bool:
    for name in names:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return True
    return False


def _bundled_openblas() -> list[str]:
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return [
        path for folder in folders for path in glob.glob(os.path.join(folder, _BUNDLED_OPENBLAS))
    ]


def cast_for_host(model: nn.Module) -> str:
    """Cast `model`'s floating weights to what is fastest on this host; say what was done.

    On the CPU, fp32 products go through BLAS and bf16/fp16 ones do not (measured 100 vs
    5 GFLOP/s with OpenBLAS): fp32. Elsewhere (Metal, CUDA) keep what the checkpoint ships.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    # tree_flatten is typed as a list or a dict (a dict only into a dict `destination`).
    parameters = cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters()))
    floating = {value.dtype for _, value in parameters if mx.issubdtype(value.dtype, mx.floating)}
    shipped = "/".join(sorted(str(dtype).removeprefix("mlx.core.") for dtype in floating))
    if mx.default_device() != mx.cpu:
        return f"GPU, {shipped} weights as shipped"
    if floating <= {mx.float32} or not fast_path_enabled():
        return f"CPU, {shipped} weights as shipped"
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return f"CPU, float32 weights (cast from {shipped}: only fp32 products use BLAS)"


def adapt_for_host(model: nn.Module) -> str:
    """Make `model` run fastest on this host; say what was done and why, for the log.

    On a GPU (Metal, CUDA) nothing changes. On a CPU, unless SMOLVLM_CPU_FAST_PATH says
    otherwise: the vision encoder and the text model past its embeddings run in numpy
    (`cpu_kernels`: MLX's x86 softmax, exp, erf and elementwise kernels are scalar code on
    one core, and its bundled OpenBLAS is slow at one-row products), and what stays in MLX
    gets fp32 weights (`cast_for_host`). The numpy parts take fp32 copies of the weights
    they use, and the MLX modules they replace are dropped, before the rest is cast.
    """
    import mlx.core as mx

    if mx.default_device() != mx.cpu or not numpy_kernels_enabled():
        return cast_for_host(model)
    from inference_worker.cpu_kernels import Threads, VisionEncoder, numpy_language_model

    threads = Threads(compute_threads())
    vision = model.vision_model
    vision.encoder = VisionEncoder(vision.encoder, threads)
    numpy_language_model(model.language_model, threads)
    return (
        f"{cast_for_host(model)}; vision encoder and text model in numpy on "
        f"{threads.count} threads (MLX's CPU softmax, exp and erf are scalar code)"
    )
