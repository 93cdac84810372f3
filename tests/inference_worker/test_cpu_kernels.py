"""The numpy kernels of CPU hosts give what mlx_vlm's MLX modules give, within fp32 rounding.

Each is held against the MLX code it replaces, on random weights of small sizes: GELU
against MLX's erf form, one head's attention (with a cached prefix) against MLX's scaled
dot-product attention, the vision encoder against mlx_vlm's SigLIP encoder, and the text
model through a prompt and decode steps against mlx_vlm's, logits and cache offsets.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx_vlm.models.cache import make_prompt_cache
from mlx_vlm.models.idefics3.config import TextConfig, VisionConfig
from mlx_vlm.models.idefics3.language import LanguageModel
from mlx_vlm.models.idefics3.vision import Encoder

from inference_worker import cpu_kernels
from inference_worker.cpu_kernels import DecoderLayer, Threads, VisionEncoder, attend, gelu_


@pytest.fixture(params=[1, 2], ids=["one thread", "two threads"])
def threads(request):
    pool = Threads(request.param)
    yield pool
    pool.close()


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    """`module` with every weight drawn at random (norm weights near 1), evaluated."""
    mx.random.seed(seed)
    module.update(
        nn.utils.tree_map(
            lambda p: mx.random.normal(p.shape) * 0.2 + (p == 1) * 1.0, module.parameters()
        )
    )
    mx.eval(module.parameters())
    return module


def test_gelu_is_mlxs_tanh_form_within_fp32_rounding():
    x = np.concatenate(
        [np.linspace(-12, 12, 20001, dtype=np.float32), np.float32([0.0, -0.0, -60.0, 60.0])]
    )
    expected = np.array(nn.gelu_approx(mx.array(x)))  # what mlx_vlm's SigLIP MLP applies

    with np.errstate(over="raise", invalid="raise"):  # no warning from the far tails
        got = gelu_(x.copy())

    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-7)
    assert got[-2] == 0.0 and got[-1] == 60.0  # far tails: exactly 0 and x


def test_one_heads_attention_after_a_cached_prefix_matches_mlx():
    rng = np.random.default_rng(0)
    cached, length, depth = 4, 5, 16
    q = rng.standard_normal((length, depth), np.float32)
    k = rng.standard_normal((cached + length, depth), np.float32)
    v = rng.standard_normal((cached + length, depth), np.float32)
    hidden = np.triu(np.full((length, cached + length), -np.inf, np.float32), k=cached + 1)
    expected = mx.fast.scaled_dot_product_attention(
        *(mx.array(a)[None, None] for a in (q, k, v)), scale=0.25, mask="causal"
    )

    out = np.empty((length, depth), np.float32)
    attend(q, k, v, out, 0.25, hidden)

    np.testing.assert_allclose(out, np.array(expected)[0, 0], atol=1e-5)


@pytest.mark.parametrize("frames", [1, 3], ids=["one frame", "three frames"])
def test_the_numpy_vision_encoder_gives_the_mlx_encoders_output(threads, frames):
    """Whole frames per thread (3 frames, an odd number for two threads), or one frame's
    products and heads shared among the threads."""
    config = VisionConfig(
        model_type="smolvlm_vision",
        hidden_size=64,
        num_attention_heads=4,
        patch_size=4,
        num_hidden_layers=2,
        intermediate_size=128,
    )
    encoder = _randomised(Encoder(config), seed=1)
    x = mx.random.normal((frames, 16, 64))
    expected, _ = encoder(x)

    got, states = VisionEncoder(encoder, threads)(x, output_hidden_states=True)

    assert states is None  # what mlx_vlm's SmolVLM path asks for and drops
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-4, atol=1e-4)


def _text_config() -> TextConfig:
    return TextConfig(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=97,
        rope_theta=100000.0,
        num_hidden_layers=2,
    )


def test_the_numpy_text_model_matches_mlx_through_a_prompt_and_decode_steps(threads):
    reference = _randomised(LanguageModel(_text_config()), seed=2)
    numpy_model = LanguageModel(_text_config())
    numpy_model.update(reference.parameters())
    cpu_kernels.numpy_language_model(numpy_model, threads)
    assert all(isinstance(layer, DecoderLayer) for layer in numpy_model.layers)
    mlx_cache, numpy_cache = make_prompt_cache(reference), make_prompt_cache(numpy_model)

    steps = [mx.array([[5, 17, 3, 88, 42, 9, 61]]), mx.array([[12]]), mx.array([[7]])]
    for tokens in steps:
        expected = reference(tokens, cache=mlx_cache).logits
        got = numpy_model(tokens, cache=numpy_cache).logits
        assert got.shape == expected.shape
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-4, atol=1e-4)
        assert [c.offset for c in numpy_cache] == [c.offset for c in mlx_cache]
    assert numpy_cache[0].offset == 9


def test_a_shared_product_is_the_whole_product(threads):
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((37, 16), np.float32)  # 37 columns: uneven blocks
    for rows in (1, 5):
        x = rng.standard_normal((rows, 16), np.float32)
        np.testing.assert_allclose(threads.product(x, weight), x @ weight.T, rtol=1e-6)


def test_the_numpy_text_model_refuses_what_it_does_not_do(threads):
    model = LanguageModel(_text_config())
    cpu_kernels.numpy_language_model(model, threads)
    batch = mx.array([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="one prompt at a time"):
        model(batch, cache=make_prompt_cache(model))
    with pytest.raises(ValueError, match="plain KVCache"):
        model(batch[:1], cache=None)


def test_silu_of_very_negative_gates_is_zero_without_a_warning(threads):
    # exp(-gate) overflows to inf there; SiLU is -0, and numpy must not warn (tests turn
    # warnings into errors, and a worker's stderr would fill with them).
    model = _randomised(LanguageModel(_text_config()), seed=3)
    cpu_kernels.numpy_language_model(model, threads)
    layer = model.layers[0]
    layer._gate_up = np.ones((256, 64), np.float32)  # gate = up = the sum of x: -6400
    with np.errstate(over="raise", invalid="raise"):
        out = layer._mlp(np.full((1, 64), -100.0, np.float32))
    assert np.all(out == 0.0)
