"""SmolVLM2's vision encoder and text model in numpy, for MLX on a CPU without a GPU.

Why: the `mlx[cpu]` build for x86 runs its elementwise and softmax kernels as scalar code
on one core (about 17 ns for one `exp`), so of each vision-tower layer on one frame the
softmax over 12 x 1024 x 1024 attention scores and the GELU over 1024 x 3072 activations
took longer than all of the layer's matrix products. numpy's ufuncs use the host's SIMD
units (AVX2: 8 floats at once, about 2 ns an `exp`) and release the GIL, so the same work
runs in a fraction of the time, on every core. The matrix products go to numpy's OpenBLAS.

What is here, installed by `inference_worker.compute.adapt_for_host` (which says when):

* `VisionEncoder`: the SigLIP encoder (the vision tower's 12 layers) on numpy arrays,
  built from the loaded MLX layers' weights, in place of mlx_vlm's encoder. Frames are
  independent, so each thread takes whole frames through all 12 layers: no thread waits
  for another between layers;
* `DecoderLayer`, `RMSNorm`, `Linear`: the text model past its token embeddings, its
  products split by output columns and its heads shared among the threads.
* `Threads`: the pool, and OpenBLAS held to one thread per call (see why there).

Softmax takes three passes over a head's scores (max, subtract, exp): the row sums come
out of the product with the values, as a column of ones appended to them, and the
division is done on the 64-wide result instead of the 1024-wide scores.

Numerics: fp32 throughout, the same formulas as the MLX modules they replace; results
differ from MLX's by rounding only (the order of sums), and greedy replies are the same.

Imports MLX: import this module only after `compute.use_fast_blas` has run.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import mlx.core as mx
import numpy as np
import threadpoolctl
from mlx import nn
from mlx_vlm.models.cache import KVCache

_F32 = np.float32
_GELU_LINEAR = _F32(-2.0 * math.sqrt(2.0 / math.pi))
_GELU_CUBIC = _F32(-2.0 * math.sqrt(2.0 / math.pi) * 0.044715)
# GELU works through its input in slices of this many floats (128 KiB): each slice's
# seven passes stay in the core's cache.
_GELU_SLICE = 1 << 15

_Item = TypeVar("_Item")
# Products of fewer rows than this run in the calling thread (see Threads.product).
_SHARED_PRODUCT_ROWS = 8


class Threads:
    """A pool of `count` threads for numpy work, and the one place that sets BLAS threads.

    OpenBLAS is set to one thread per call, once, for good: every product runs in the
    thread that asks for it, and the cores are shared by this pool instead (frames, heads,
    or a product's output columns per thread). Changing OpenBLAS's thread count while it
    runs is what we must not do: doing it around every layer (threadpoolctl's context, to
    lend the cores to the pool and back) deadlocked a worker under load, its main thread
    spinning in a product whose helper thread had missed its wake-up.
    """

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(self.count, thread_name_prefix="cpu-kernels")
            if self.count > 1
            else None
        )
        # numpy's OpenBLAS, and the one `use_fast_blas` put under MLX: not limited back.
        threadpoolctl.threadpool_limits(limits=1, user_api="blas")

    def share(self, items: Sequence[_Item], work: Callable[[list[_Item]], None]) -> None:
        """`work(share)` for `count` interleaved shares of `items`, one share per thread."""
        if self._pool is None or len(items) < 2:
            work(list(items))
            return
        shares = [list(items[i :: self.count]) for i in range(self.count)]
        futures = [self._pool.submit(work, share) for share in shares if share]
        for future in futures:
            future.result()

    def product(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """x @ weight.T for rows x (n, in) and weight (out, in): each thread computes a
        block of the output columns, reading only its share of the weight."""
        if x.shape[0] < _SHARED_PRODUCT_ROWS:
            # A decode step's products read the weights once and are bound by memory, not
            # by the cores: two threads gained nothing here, and each hand-off costs ~0.1 ms.
            return x @ weight.T
        out = np.empty((x.shape[0], weight.shape[0]), _F32)
        step = -(-weight.shape[0] // self.count)
        blocks = [slice(start, start + step) for start in range(0, weight.shape[0], step)]

        def multiply(chosen: list[slice]) -> None:
            for block in chosen:
                np.matmul(x, weight[block].T, out=out[:, block])

        self.share(blocks, multiply)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    scale: float,
    hidden: np.ndarray | None = None,
) -> None:
    """out = softmax(q k^T * scale + hidden) v for one head: q (L, D), k and v (S, D),
    out (L, D); `hidden` (L, S) is 0 where a query may see a key, -inf where not."""
    keys = k.shape[0]
    scores = q @ k.T
    if scale != 1.0:
        scores *= _F32(scale)
    if hidden is not None:
        scores += hidden
    np.subtract(scores, scores.max(axis=-1, keepdims=True), out=scores)
    np.exp(scores, out=scores)
    # The values with a column of ones: the product gives each row's sum beside it.
    values = np.empty((keys, v.shape[1] + 1), _F32)
    values[:, :-1] = v
    values[:, -1] = 1.0
    weighted = scores @ values
    np.divide(weighted[:, :-1], weighted[:, -1:], out=out)


def attend_one_query(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """softmax(q k^T * scale) v for one query in every head: q (Hq, D), k and v (Hk, S, D),
    Hq a multiple of Hk (grouped queries); (Hq, D). A decode step's attention."""
    heads, depth = q.shape
    kv_heads = k.shape[0]
    grouped = q.reshape(kv_heads, heads // kv_heads, depth)
    scores = np.matmul(grouped, k.transpose(0, 2, 1))  # (Hk, group, S)
    scores *= _F32(scale)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return np.matmul(scores, v).reshape(heads, depth)


def gelu_(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form (MLX's `gelu_approx`, which mlx_vlm's SigLIP MLP uses), in
    place on a C-contiguous `x`; returns `x`.

    0.5 x (1 + tanh(z)) is x * sigmoid(2 z), z = sqrt(2 / pi) (x + 0.044715 x^3): seven
    passes over each cache-sized slice, one of them an `exp`.
    """
    flat = x.reshape(-1)
    for start in range(0, flat.size, _GELU_SLICE):
        _gelu_slice(flat[start : start + _GELU_SLICE])
    return x


def _gelu_slice(x: np.ndarray) -> None:
    minus_2z = np.square(x)  # -2z = x (-2 sqrt(2 / pi)) (1 + 0.044715 x^2)
    minus_2z *= _GELU_CUBIC
    minus_2z += _GELU_LINEAR
    minus_2z *= x
    with np.errstate(over="ignore"):  # exp(-2z) = inf for x < about -10: GELU is -0 there
        np.exp(minus_2z, out=minus_2z)
    minus_2z += 1.0
    np.divide(x, minus_2z, out=x)


class _LayerNorm:
    def __init__(self, norm: Any) -> None:
        self.weight = _fp32(norm.weight)
        self.bias = _fp32(norm.bias)
        self.eps = _F32(norm.eps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        centred = x - x.mean(axis=-1, keepdims=True)
        variance = np.einsum("ij,ij->i", centred, centred)[:, None] / _F32(x.shape[-1])
        variance += self.eps
        centred *= 1.0 / np.sqrt(variance)
        centred *= self.weight
        centred += self.bias
        return centred


class _EncoderLayer:
    """One pre-norm SigLIP layer's weights as numpy arrays (fp32, as `nn.Linear` keeps
    them: (out, in), used as `x @ w.T`)."""

    def __init__(self, layer: Any) -> None:
        attention = layer.self_attn
        # q, k and v in one product; the attention's scale (1/8 for 64-wide heads: exact
        # in fp32) folded into q's weights and bias.
        q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
        scale = attention.scale
        self.w_qkv = _fp32_stack(q.weight.astype(mx.float32) * scale, k.weight, v.weight)
        self.b_qkv = _fp32_stack(q.bias.astype(mx.float32) * scale, k.bias, v.bias)
        self.w_out = _fp32(attention.out_proj.weight)
        self.b_out = _fp32(attention.out_proj.bias)
        self.w_up = _fp32(layer.mlp.fc1.weight)
        self.b_up = _fp32(layer.mlp.fc1.bias)
        self.w_down = _fp32(layer.mlp.fc2.weight)
        self.b_down = _fp32(layer.mlp.fc2.bias)
        self.norm1 = _LayerNorm(layer.layer_norm1)
        self.norm2 = _LayerNorm(layer.layer_norm2)
        self.heads = attention.num_heads

    def __call__(self, x: np.ndarray, threads: Threads | None = None) -> np.ndarray:
        """x: one frame's (tokens, width), updated in place and returned. With `threads`,
        the layer's products and heads are shared among them; without, it runs here."""
        width = x.shape[1]
        depth = width // self.heads

        def product(rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
            return threads.product(rows, weight) if threads else rows @ weight.T

        qkv = product(self.norm1(x), self.w_qkv)
        qkv += self.b_qkv
        attended = np.empty_like(x)

        def attend_heads(heads: list[int]) -> None:
            for head in heads:
                columns = slice(head * depth, (head + 1) * depth)
                attend(
                    qkv[:, columns],
                    qkv[:, width:][:, columns],
                    qkv[:, 2 * width :][:, columns],
                    attended[:, columns],
                    scale=1.0,
                )

        if threads:
            threads.share(list(range(self.heads)), attend_heads)
        else:
            attend_heads(list(range(self.heads)))
        x += product(attended, self.w_out)
        x += self.b_out
        hidden = product(self.norm2(x), self.w_up)
        hidden += self.b_up
        x += product(gelu_(hidden), self.w_down)
        x += self.b_down
        return x


class VisionEncoder(nn.Module):
    """mlx_vlm's SigLIP `Encoder`, run in numpy: the same call, the same last hidden state.

    Holds its weights as numpy arrays (not MLX parameters), so that the MLX copies are
    freed once it replaces the encoder. The per-layer hidden states that mlx_vlm's SmolVLM
    path requests and then drops are not collected: the second item returned is None.
    """

    def __init__(self, encoder: Any, threads: Threads) -> None:
        super().__init__()
        self._layers = [_EncoderLayer(layer) for layer in encoder.layers]
        self._threads = threads

    def __call__(
        self, x: mx.array, output_hidden_states: bool | None = None, mask: mx.array | None = None
    ) -> tuple[mx.array, None]:
        if mask is not None:
            raise ValueError("the numpy vision encoder takes no attention mask")
        frames, tokens, width = x.shape
        hidden = np.array(_rows(x)).reshape(frames, tokens, width)  # a copy: layers work in place

        def encode(chosen: list[int]) -> None:
            for frame in chosen:
                for layer in self._layers:
                    layer(hidden[frame])

        if frames >= self._threads.count:  # frames are independent: whole frames per thread
            self._threads.share(list(range(frames)), encode)
        else:  # fewer frames than threads: each layer's work shared among them
            for frame in range(frames):
                for layer in self._layers:
                    layer(hidden[frame], self._threads)
        return mx.array(hidden), None


class Linear(nn.Module):
    """An `nn.Linear` (no bias) whose product runs in numpy: takes MLX or numpy rows,
    returns MLX (it ends the numpy language model: its logits go back to mlx_vlm)."""

    def __init__(self, linear: Any, threads: Threads) -> None:
        super().__init__()
        self._weight = _fp32(linear.weight)  # (out, in): x @ w.T, no transposed copy
        self._threads = threads

    def __call__(self, x: mx.array | np.ndarray) -> mx.array:
        y = self._threads.product(_rows(x), self._weight)
        return mx.array(y).reshape(*x.shape[:-1], y.shape[-1])


class RMSNorm(nn.Module):
    """`nn.RMSNorm` on numpy rows: x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, norm: Any) -> None:
        super().__init__()
        # Kept as MLX too: mlx_vlm's text model casts its input to `norm.weight.dtype`.
        self.weight = norm.weight
        self._weight = _fp32(norm.weight)
        self._eps = _F32(norm.eps)

    def __call__(self, x: mx.array | np.ndarray) -> np.ndarray:
        rows = _rows(x)
        mean_square = np.einsum("ij,ij->i", rows, rows)[:, None] / _F32(rows.shape[1])
        mean_square += self._eps
        normed = rows / np.sqrt(mean_square)
        normed *= self._weight
        return normed.reshape(*x.shape)


class _NumpyCache:
    """A layer's keys and values for the prompt and the tokens decoded so far."""

    def __init__(self, kv_heads: int, depth: int) -> None:
        self.keys = np.empty((kv_heads, 0, depth), _F32)
        self.values = np.empty((kv_heads, 0, depth), _F32)
        self.length = 0

    def append(self, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add (kv_heads, n, depth) keys and values; all of them so far, as views."""
        end = self.length + keys.shape[1]
        if end > self.keys.shape[1]:  # grow in steps of 256 positions, as mlx_vlm's cache
            capacity = (end + 255) // 256 * 256
            for name in ("keys", "values"):
                grown = np.empty((keys.shape[0], capacity, keys.shape[2]), _F32)
                grown[:, : self.length] = getattr(self, name)[:, : self.length]
                setattr(self, name, grown)
        self.keys[:, self.length : end] = keys
        self.values[:, self.length : end] = values
        self.length = end
        return self.keys[:, :end], self.values[:, :end]


class DecoderLayer(nn.Module):
    """mlx_vlm's SmolVLM2 text `TransformerBlock` (pre-norm, grouped-query attention with
    RoPE, SwiGLU) in numpy, called as it is: (x, mask, cache) -> x.

    Takes MLX or numpy rows and returns numpy, so that consecutive layers hand numpy arrays
    on and MLX's scalar elementwise kernels (RMSNorm, RoPE, residuals) never run. Its keys
    and values live in a numpy cache kept on mlx_vlm's cache object, whose `offset` it
    advances as mlx_vlm's own layer would (mlx_vlm builds the next call's mask from it).
    """

    def __init__(self, block: Any, threads: Threads) -> None:
        super().__init__()
        attention = block.self_attn
        self._heads, self._kv_heads = attention.n_heads, attention.n_kv_heads
        self._depth = attention.q_proj.weight.shape[0] // self._heads
        self._scale = float(attention.scale)
        self._qkv = _fp32_stack(
            attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight
        )
        self._out = _fp32(attention.o_proj.weight)
        self._gate_up = _fp32_stack(block.mlp.gate_proj.weight, block.mlp.up_proj.weight)
        self._down = _fp32(block.mlp.down_proj.weight)
        self._norm1 = RMSNorm(block.input_layernorm)
        self._norm2 = RMSNorm(block.post_attention_layernorm)
        rope = attention.rope
        if rope.traditional or getattr(rope, "scale", 1.0) != 1.0 or rope.dims != self._depth:
            raise ValueError("the numpy decoder layer knows only llama's plain RoPE")
        half = self._depth // 2
        self._inverse_frequencies = (
            _F32(rope.base) ** (-np.arange(half, dtype=_F32) / _F32(half))
        ).astype(_F32)
        self._threads = threads

    def __call__(self, x: mx.array | np.ndarray, mask: Any = None, cache: Any = None) -> np.ndarray:
        if cache is None or type(cache) is not KVCache:
            raise ValueError("the numpy decoder layer needs mlx_vlm's plain KVCache")
        if not (mask is None or (isinstance(mask, str) and mask == "causal")):
            raise ValueError("the numpy decoder layer takes no mask arrays (batched prompts)")
        batch, length, width = x.shape
        if batch != 1:
            raise ValueError("the numpy decoder layer takes one prompt at a time")
        rows = _rows(x)
        h = rows.copy() if isinstance(x, mx.array) else rows
        h += self._attention(self._norm1(rows), length, cache)
        h += self._mlp(self._norm2(h))
        return h.reshape(batch, length, width)

    def _attention(self, x: np.ndarray, length: int, cache: Any) -> np.ndarray:
        heads, kv_heads, depth = self._heads, self._kv_heads, self._depth
        qkv = self._threads.product(x, self._qkv)  # (length, (heads + 2 kv_heads) depth)
        q = qkv[:, : heads * depth].reshape(length, heads, depth).transpose(1, 0, 2)
        k = qkv[:, heads * depth : (heads + kv_heads) * depth]
        v = qkv[:, (heads + kv_heads) * depth :]
        k = k.reshape(length, kv_heads, depth).transpose(1, 0, 2)
        v = v.reshape(length, kv_heads, depth).transpose(1, 0, 2)
        positions = np.arange(cache.offset, cache.offset + length, dtype=_F32)
        angles = positions[:, None] * self._inverse_frequencies[None, :]
        cos, sin = np.cos(angles), np.sin(angles)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        store = getattr(cache, "numpy_kv", None)
        if store is None:
            store = cache.numpy_kv = _NumpyCache(kv_heads, depth)
        keys, values = store.append(k, v)
        cache.offset += length  # as mlx_vlm's KVCache.update_and_fetch does
        total = keys.shape[1]
        hidden = (
            np.triu(np.full((length, total), -np.inf, _F32), k=total - length + 1)
            if length > 1
            else None
        )
        if length == 1:  # a decode step: every head at once, a few numpy calls in all
            attended = attend_one_query(q[:, 0], keys, values, self._scale)
            return self._threads.product(attended.reshape(1, heads * depth), self._out)
        out = np.empty((heads, length, depth), _F32)
        group = heads // kv_heads

        def attend_heads(chosen: list[int]) -> None:
            for h in chosen:
                attend(q[h], keys[h // group], values[h // group], out[h], self._scale, hidden)

        self._threads.share(list(range(heads)), attend_heads)
        return self._threads.product(
            out.transpose(1, 0, 2).reshape(length, heads * depth), self._out
        )

    def _mlp(self, x: np.ndarray) -> np.ndarray:
        gate_up = self._threads.product(x, self._gate_up)
        width = gate_up.shape[1] // 2
        gate, up = gate_up[:, :width], gate_up[:, width:]
        hidden = np.negative(gate)
        with np.errstate(over="ignore"):  # exp(-gate) = inf for gate < -88: SiLU is -0 there
            np.exp(hidden, out=hidden)
        hidden += 1.0
        np.divide(gate, hidden, out=hidden)  # SiLU(gate) = gate / (1 + exp(-gate))
        hidden *= up
        return self._threads.product(hidden, self._down)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """llama's RoPE on (heads, length, depth): the halves of each vector rotated by angle."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    out = np.empty(x.shape, _F32)
    np.multiply(first, cos, out=out[..., :half])
    out[..., :half] -= second * sin
    np.multiply(first, sin, out=out[..., half:])
    out[..., half:] += second * cos
    return out


def _rows(x: mx.array | np.ndarray) -> np.ndarray:
    """`x` (..., width) as numpy (rows, width) fp32: MLX arrays evaluated and viewed."""
    if isinstance(x, mx.array):
        mx.eval(x)
    return np.asarray(x, dtype=_F32).reshape(-1, x.shape[-1])


def _fp32(weight: mx.array) -> np.ndarray:
    """An MLX weight as a C-contiguous fp32 numpy array: cast by MLX (fast), then viewed;
    the numpy array keeps the MLX buffer alive."""
    cast = mx.contiguous(weight.astype(mx.float32))
    mx.eval(cast)
    return np.asarray(cast)


def _fp32_stack(*weights: mx.array) -> np.ndarray:
    """Weights of the same input width, one above the other: one product for them all."""
    return _fp32(mx.concatenate([weight.astype(mx.float32) for weight in weights]))


def numpy_language_model(language_model: Any, threads: Threads) -> None:
    """Run `language_model` (a SmolVLM2 text model) in numpy past its token embeddings."""
    language_model.layers = [DecoderLayer(block, threads) for block in language_model.layers]
    language_model.norm = RMSNorm(language_model.norm)
    language_model.lm_head = Linear(language_model.lm_head, threads)
    language_model.one_prompt_at_a_time = True  # SmolVLM.generate_batch asks
