"""The tiny SmolVLM2 is the real architecture, built offline, deterministic, loadable by mlx_vlm."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from inference_worker import tiny_model

EXPECTED_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
}


def _read_json(directory, name):
    return json.loads((directory / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    """The tiny model loaded by the real `mlx_vlm.load`, shared by this module's tests."""
    import mlx_vlm

    return mlx_vlm.load(str(tiny_model_dir))


def test_built_folder_has_the_files_of_a_converted_checkpoint(tiny_model_dir):
    assert {path.name for path in tiny_model_dir.iterdir()} == EXPECTED_FILES


def test_config_ids_match_the_tokenizer_and_image_seq_len_matches_the_vision_tower(
    tiny_model_dir,
):
    """A wrong image_seq_len fails at generate time ("Image features and image tokens...")."""
    from tokenizers import Tokenizer

    config = _read_json(tiny_model_dir, "config.json")
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    vision = config["vision_config"]

    assert config["model_type"] == "smolvlm"
    assert config["image_token_id"] == tokenizer.token_to_id("<image>")
    assert config["eos_token_id"] == tokenizer.token_to_id("<end_of_utterance>")
    assert config["vocab_size"] == tokenizer.get_vocab_size(with_added_tokens=True)
    assert config["text_config"]["vocab_size"] == config["vocab_size"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    image_seq_len = patches // config["scale_factor"] ** 2
    assert _read_json(tiny_model_dir, "processor_config.json")["image_seq_len"] == image_seq_len
    preprocessor = _read_json(tiny_model_dir, "preprocessor_config.json")
    assert preprocessor["max_image_size"]["longest_edge"] == vision["image_size"]


def test_tokenizer_has_the_smolvlm2_special_tokens_english_words_and_digits(tiny_model_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)

    for token in tiny_model.SPECIAL_TOKENS:
        assert token in vocab
    assert {"<row_1_col_1>", "<row_6_col_6>", "<global-img>"} <= set(vocab)
    # Byte-level BPE marks a leading space with "Ġ": whole words are single tokens.
    assert {"Ġvideo", "Ġthe", "Ġframes", "Ġhighlight"} <= set(vocab)
    assert set("0123456789") <= set(vocab)


def test_any_text_round_trips_through_the_tokenizer(tiny_model_dir):
    """Every byte stays encodable, so prompts with unseen characters lose nothing."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    text = 'Squats at 00:12 — {"reps": 7} ünïcødé ✓'
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_loads_through_the_real_mlx_vlm_load_as_the_smolvlm_architecture(loaded):
    from mlx_vlm.models.smolvlm import Model
    from mlx_vlm.models.smolvlm.processing_smolvlm import SmolVLMProcessor

    model, processor = loaded
    assert type(model) is Model
    assert isinstance(processor, SmolVLMProcessor)
    assert processor.image_processor.max_image_size == {"longest_edge": tiny_model.IMAGE_SIZE}


def test_chat_template_is_the_smolvlm2_one(loaded):
    from mlx_vlm import apply_chat_template

    model, processor = loaded
    prompt = apply_chat_template(processor, model.config, "What happens?", num_images=2)
    assert prompt == ("<|im_start|>User:<image><image>What happens?<end_of_utterance>\nAssistant:")


def test_random_generations_are_words_and_digits_up_to_max_tokens(loaded):
    """Special tokens, bytes and word pieces are silenced in the output layer."""
    from mlx_vlm import apply_chat_template, generate

    model, processor = loaded
    frame = Image.new("RGB", (80, 60), (200, 30, 30))
    prompt = apply_chat_template(processor, model.config, "Describe.", num_images=1)
    result = generate(model, processor, prompt, image=[frame], max_tokens=12, temperature=0.0)

    assert result.generation_tokens == 12
    assert re.fullmatch(r"( [A-Za-z]+|[0-9.,:])+", result.text)
    words = set(re.findall(r"[A-Za-z]+", " ".join(tiny_model.CORPUS)))
    assert set(re.findall(r"[A-Za-z]+", result.text)) <= words


def test_same_seed_gives_byte_identical_files(tiny_model_dir, tmp_path):
    again = tiny_model.build_tiny_model(tmp_path / "again", seed=0)
    for name in EXPECTED_FILES:
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_cli_prints_the_path_and_another_seed_changes_only_the_weights(
    tiny_model_dir, tmp_path, capsys
):
    target = tmp_path / "seed1"
    tiny_model.main([str(target), "--seed", "1"])

    assert capsys.readouterr().out.strip() == str(target)
    for name in EXPECTED_FILES - {"model.safetensors"}:
        assert (target / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    weights = (target / "model.safetensors").read_bytes()
    assert weights != (tiny_model_dir / "model.safetensors").read_bytes()


def test_a_steered_model_answers_its_digit_through_the_real_generate_path(steered_model_dir):
    """Steering sets weights, not code: the real mlx_vlm load and generate give "8"."""
    from inference_worker.model import load_model

    model = load_model(str(steered_model_dir))
    frame = Image.new("RGB", (64, 48), (200, 10, 10))
    assert model.generate("Rate this segment from 1 to 10.", [frame] * 3, 20) == "8"
    assert model.generate("Describe the video.", [], 20) == "8"
    assert model.last_stats.generation_tokens <= 2  # the digit, then the end of the turn


def test_a_model_steered_to_a_sentence_says_it_and_stops(tmp_path):
    """Full-size builds are steered to a verdict of a real model's length, the same way."""
    from inference_worker.model import load_model

    directory = tiny_model.build_tiny_model(tmp_path, answer=tiny_model.FULL_SIZE_ANSWER)
    model = load_model(str(directory))
    frame = Image.new("RGB", (64, 48), (10, 200, 10))

    assert model.generate("Rate this segment.", [frame] * 4, 64) == tiny_model.FULL_SIZE_ANSWER
    tokens = model.last_stats.generation_tokens
    assert 10 <= tokens <= 14  # a dozen words and signs, then the end of the turn


@pytest.mark.parametrize("answer", ["", "a goal a goal", "Score: 8"])
def test_steering_refuses_answers_it_cannot_give_exactly(tmp_path, answer):
    """Repeated tokens or the prompt's closing ':' would send the chain elsewhere."""
    with pytest.raises(ValueError, match="distinct tokens"):
        tiny_model.build_tiny_model(tmp_path, answer=answer)


@pytest.mark.parametrize(("size", "parameters"), [("500m", 507_482_304), ("256m", 256_484_928)])
def test_full_sizes_have_the_real_checkpoints_dimensions(size, parameters):
    """Counted from the real mlx_vlm architecture built from the config (nothing evaluated)."""
    from mlx.utils import tree_flatten
    from mlx_vlm.models import smolvlm

    dims = tiny_model.SIZES[size]
    config = tiny_model._model_config(dims, dims.vocab_size, 1, 2)
    model_config = smolvlm.ModelConfig.from_dict(config)
    model_config.text_config = smolvlm.TextConfig.from_dict(config["text_config"])
    model_config.vision_config = smolvlm.VisionConfig.from_dict(config["vision_config"])
    model = smolvlm.Model(model_config)

    assert sum(value.size for _, value in tree_flatten(model.parameters())) == parameters
    assert dims.image_seq_len == 64 and dims.dtype == "bfloat16"
