"""`load_model` and the `SmolVLM.generate` seam, against the tiny real SmolVLM2."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from inference_worker.compute import FAST_PATH_ENV
from inference_worker.model import ModelUnavailable, SmolVLM, load_model
from inference_worker.tiny_model import IMAGE_SEQ_LEN, IMAGE_SIZE
from protocol import model_display_name

PROMPT = "Describe what happens in the video."
# Per frame, without splitting: <fake_token_around_image><global-img>, the image tokens,
# and a closing <fake_token_around_image>.
TOKENS_PER_FRAME = IMAGE_SEQ_LEN + 3


def _frames(count: int) -> list[Image.Image]:
    # Larger than the vision tower's input and not square, like decoded video frames.
    return [Image.new("RGB", (160, 120), (40 * i % 256, 90, 200 - 30 * i)) for i in range(count)]


@pytest.fixture(scope="module", params=["1", "blas"], ids=["numpy kernels", "MLX kernels"])
def vlm(tiny_model_dir, request) -> SmolVLM:
    """The model on both CPU paths: the worker's numpy kernels (which answer a batch's
    rows in turn) and MLX's own (batched decoding, as on GPUs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAST_PATH_ENV, request.param)
        return load_model(str(tiny_model_dir))


@pytest.fixture
def no_hub(monkeypatch):
    """Make any Hugging Face Hub lookup fail the test."""
    import mlx_vlm.utils

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the hub was asked for {args} {kwargs}")

    monkeypatch.setattr(mlx_vlm.utils, "snapshot_download", forbidden)
    monkeypatch.setattr(mlx_vlm.utils, "get_model_path", forbidden)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache for this test only."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_name_is_the_local_folder_name_never_the_full_path(vlm, tiny_model_dir):
    assert vlm.name == tiny_model_dir.name == model_display_name(str(tiny_model_dir))
    assert str(tiny_model_dir.parent) not in repr(vlm)
    assert vlm.name in repr(vlm)


def test_image_splitting_is_off_after_load(vlm):
    assert vlm._processor.image_processor.do_image_splitting is False


def test_image_size_is_the_longest_edge_the_vision_tower_takes(vlm):
    assert vlm.image_size == IMAGE_SIZE == vlm._model.config.vision_config.image_size


@pytest.mark.parametrize("frame_count", [1, 4])
def test_generate_returns_text_for_frames(vlm, frame_count):
    reply = vlm.generate(PROMPT, _frames(frame_count), max_tokens=8)

    assert isinstance(reply, str)
    assert reply == reply.strip()
    assert vlm.last_stats.generation_tokens == 8
    assert vlm.last_stats.peak_memory > 0


def test_each_frame_costs_one_unsplit_image_of_tokens(vlm):
    """Frames larger than the tower's input are not tiled: with splitting on, each would cost 5x."""
    vlm.generate(PROMPT, _frames(1), max_tokens=1)
    one = vlm.last_stats.prompt_tokens
    vlm.generate(PROMPT, _frames(4), max_tokens=1)

    assert vlm.last_stats.prompt_tokens - one == 3 * TOKENS_PER_FRAME


def test_generate_without_frames_is_a_text_only_prompt(vlm):
    reply = vlm.generate(PROMPT, [], max_tokens=5)

    assert isinstance(reply, str)
    assert vlm.last_stats.generation_tokens == 5


def test_generate_is_deterministic_at_temperature_zero(vlm):
    first = vlm.generate(PROMPT, _frames(2), max_tokens=10)
    second = vlm.generate(PROMPT, _frames(2), max_tokens=10)

    assert first == second


def test_generate_rejects_max_tokens_below_one(vlm):
    with pytest.raises(ValueError, match="max_tokens"):
        vlm.generate(PROMPT, _frames(1), max_tokens=0)


@pytest.mark.parametrize("relative", ["missing/my-model", "./my-model", "~/no-such-dir/my-model"])
def test_missing_local_folder_fails_without_the_hub_and_without_its_path(
    tmp_path, monkeypatch, no_hub, relative
):
    """Anything path-like that is not "owner/name" is a local folder and is never downloaded."""
    monkeypatch.chdir(tmp_path)
    model = str(tmp_path / relative) if relative.startswith("missing") else relative

    with pytest.raises(ModelUnavailable) as caught:
        load_model(model)

    message = str(caught.value)
    assert "model folder 'my-model' does not exist" in message
    assert str(tmp_path) not in message and "~" not in message


def test_local_file_instead_of_folder_fails_without_the_hub(tmp_path, no_hub):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")

    with pytest.raises(ModelUnavailable, match="'model.safetensors' is not a folder"):
        load_model(str(file))


def test_folder_that_is_not_a_model_fails_without_its_path(tmp_path, no_hub):
    folder = tmp_path / "empty-model"
    folder.mkdir()

    with pytest.raises(ModelUnavailable) as caught:
        load_model(str(folder))

    message = str(caught.value)
    assert "model folder 'empty-model' could not be loaded" in message
    assert str(tmp_path) not in message


def test_empty_model_name_fails(no_hub):
    with pytest.raises(ModelUnavailable, match="no model was given"):
        load_model("  ")


def test_hf_id_not_in_the_cache_fails_offline_naming_the_id(hf_cache):
    with pytest.raises(ModelUnavailable) as caught:
        load_model("nobody-here/SmolVLM2-not-cached")

    message = str(caught.value)
    assert "model 'nobody-here/SmolVLM2-not-cached'" in message
    assert "not in the local Hugging Face cache and downloads are off" in message
    assert "huggingface-cli download nobody-here/SmolVLM2-not-cached" in message


def test_hf_id_in_the_cache_loads_offline_under_its_id(hf_cache, tiny_model_dir):
    """The hub path goes through mlx_vlm's own snapshot lookup, which works offline."""
    commit = "0" * 40
    repo = hf_cache / "models--tiny-org--tiny-smolvlm2"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    vlm = load_model("tiny-org/tiny-smolvlm2")

    assert vlm.name == "tiny-org/tiny-smolvlm2"
    assert isinstance(vlm.generate(PROMPT, _frames(1), max_tokens=3), str)


def _raw_mlx_vlm_reply(vlm, prompt, frames, max_tokens):
    """The same call straight through mlx_vlm, which runs the vision tower itself."""
    from mlx_vlm import apply_chat_template
    from mlx_vlm import generate as mlx_generate

    formatted = apply_chat_template(
        vlm._processor, vlm._model.config, prompt, num_images=len(frames)
    )
    result = mlx_generate(
        vlm._model, vlm._processor, formatted, image=frames, max_tokens=max_tokens, temperature=0.0
    )
    return result.text.strip()


@pytest.mark.parametrize("frame_count", [1, 4])
def test_features_computed_by_the_worker_give_mlx_vlms_own_answer(vlm, frame_count):
    frames = _frames(frame_count)
    assert vlm.generate(PROMPT, frames, 12) == _raw_mlx_vlm_reply(vlm, PROMPT, frames, 12)


def test_kept_frames_go_through_the_vision_tower_once_with_unchanged_answers(vlm):
    """An overview of 8 frames, then two segments of 4 of them: 8 vision passes, not 16."""
    frames = _frames(8)
    segments = [frames[:4], frames[4:]]
    expected = [_raw_mlx_vlm_reply(vlm, PROMPT, segment, 12) for segment in segments]
    before = vlm.frames_encoded

    with vlm.features_kept(frames):
        vlm.generate("Describe the video.", frames, 4)
        replies = [vlm.generate(PROMPT, segment, 12) for segment in segments]

    assert vlm.frames_encoded - before == 8
    assert replies == expected


def test_frames_are_kept_only_within_the_block(vlm):
    frames = _frames(2)
    with vlm.features_kept(frames):
        vlm.generate(PROMPT, frames, 1)
    before = vlm.frames_encoded

    vlm.generate(PROMPT, frames, 1)
    vlm.generate(PROMPT, frames, 1)

    assert vlm.frames_encoded - before == 4


# ---- generate_batch ------------------------------------------------------------------------


def _segment_frames(seed: int, count: int = 4) -> list[Image.Image]:
    """Frames that differ from one segment to the next."""
    return [
        Image.new("RGB", (160, 120), ((40 * i + 70 * seed) % 256, (90 + 50 * seed) % 256, 30 * i))
        for i in range(count)
    ]


def test_batched_greedy_replies_are_the_one_at_a_time_replies(vlm):
    """Several segments with different frames, and prompts of different lengths."""
    frame_sets = [_segment_frames(seed) for seed in range(4)]
    prompts = [PROMPT, PROMPT, "Score this part of the video from 1 to 10.", PROMPT + " Be brief."]

    one_at_a_time = [vlm.generate(p, f, 16) for p, f in zip(prompts, frame_sets, strict=True)]
    batched = vlm.generate_batch(prompts, frame_sets, 16)

    assert batched == one_at_a_time
    assert len(set(one_at_a_time)) > 1  # the segments really got different answers


def test_batched_rows_may_show_different_numbers_of_frames_or_none(vlm):
    frame_sets = [_segment_frames(1, 2), [], _segment_frames(2, 3)]
    prompts = [PROMPT] * 3

    one_at_a_time = [vlm.generate(p, f, 8) for p, f in zip(prompts, frame_sets, strict=True)]

    assert vlm.generate_batch(prompts, frame_sets, 8) == one_at_a_time


def test_a_batched_reply_ends_at_the_end_of_sequence_as_one_at_a_time(steered_model_dir):
    """The steered model answers "8" and stops: rows that end early stay as short."""
    steered = load_model(str(steered_model_dir))
    frame_sets = [_segment_frames(seed) for seed in range(3)]

    batched = steered.generate_batch([PROMPT] * 3, frame_sets, 12)

    assert batched == [steered.generate(PROMPT, frames, 12) for frames in frame_sets]
    assert batched == ["8"] * 3


def test_a_batch_reuses_kept_frames_and_counts_its_tokens(vlm):
    frames = _segment_frames(3, 8)
    rows = [frames[:4], frames[4:]]
    before_frames, before_calls = vlm.frames_encoded, vlm.totals.calls
    with vlm.features_kept(frames):
        vlm.generate_batch([PROMPT, PROMPT], rows, 4)
        vlm.generate_batch([PROMPT, PROMPT], rows, 4)
    batch_stats = vlm.last_stats

    assert vlm.frames_encoded - before_frames == 8
    assert vlm.totals.calls - before_calls == 2
    one_at_a_time = []
    for row in rows:
        vlm.generate(PROMPT, row, 4)
        one_at_a_time.append(vlm.last_stats)
    assert batch_stats.prompt_tokens == sum(s.prompt_tokens for s in one_at_a_time)
    assert batch_stats.generation_tokens == sum(s.generation_tokens for s in one_at_a_time)


def test_generate_batch_rejects_bad_arguments(vlm):
    with pytest.raises(ValueError, match="at least 1"):
        vlm.generate_batch([PROMPT], [_segment_frames(0)], 0)
    with pytest.raises(ValueError, match="2 prompts for 1 sets of frames"):
        vlm.generate_batch([PROMPT, PROMPT], [_segment_frames(0)], 4)
    assert vlm.generate_batch([], [], 4) == []
