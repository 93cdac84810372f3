"""A tiny random-weight SmolVLM2, built offline, for tests and demos.

The architecture is the real one (`mlx_vlm.models.smolvlm`) at toy sizes, saved in the same
on-disk layout as a converted SmolVLM2 checkpoint, so it goes through the real
`mlx_vlm.load()` and the real processor. Only the sizes and the weights are made up.

`--size 256m` / `--size 500m` build the same thing at the real SmolVLM2-Video sizes, in
bf16 as converted checkpoints ship, steered to a short verdict: a model for measuring the
real cost of the worker's calls offline (minutes per job on a CPU host), never for tests.

    python -m inference_worker.tiny_model DIR [--size tiny|256m|500m] [--answer TEXT]
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# The real SmolVLM2 chat template (transformers' SmolVLM DEFAULT_CHAT_TEMPLATE).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}"
    "{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
]

IMAGE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 2
# Image tokens per frame after the connector's pixel shuffle; must match the vision tower.
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2


@dataclass(frozen=True)
class ModelSize:
    """The dimensions that differ between the tiny model and the real SmolVLM2 checkpoints."""

    text_hidden: int
    text_intermediate: int
    text_heads: int
    text_kv_heads: int
    text_layers: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_layers: int
    image_size: int
    patch_size: int
    scale_factor: int
    # None: as many rows as the tokenizer has tokens; else the real checkpoint's vocabulary.
    vocab_size: int | None
    # bf16 is what converted SmolVLM2 checkpoints ship; the tiny model keeps fp32 bytes.
    dtype: str

    @property
    def image_seq_len(self) -> int:
        """Image tokens per frame after the connector's pixel shuffle."""
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


# SigLIP-B/16 at 512 px, pixel shuffle 4 (64 tokens per frame), SmolLM2 text models: the
# dimensions of HuggingFaceTB/SmolVLM2-{256M,500M}-Video-Instruct (507.5 M parameters at 500m).
class _VisionDims(TypedDict):
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_layers: int
    image_size: int
    patch_size: int
    scale_factor: int
    vocab_size: int | None
    dtype: str


_SIGLIP_B16_512: _VisionDims = {
    "vision_hidden": 768,
    "vision_intermediate": 3072,
    "vision_heads": 12,
    "vision_layers": 12,
    "image_size": 512,
    "patch_size": 16,
    "scale_factor": 4,
    "vocab_size": 49280,
    "dtype": "bfloat16",
}
SIZES = {
    "tiny": ModelSize(
        text_hidden=64,
        text_intermediate=128,
        text_heads=4,
        text_kv_heads=2,
        text_layers=2,
        vision_hidden=64,
        vision_intermediate=128,
        vision_heads=4,
        vision_layers=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        scale_factor=SCALE_FACTOR,
        vocab_size=None,
        dtype="float32",
    ),
    "256m": ModelSize(576, 1536, 9, 3, 30, **_SIGLIP_B16_512),
    "500m": ModelSize(960, 2560, 15, 5, 32, **_SIGLIP_B16_512),
}
# What a full-size build answers unless told otherwise: a verdict of about the length a
# real model writes (a dozen tokens), so decoding costs what it would.
FULL_SIZE_ANSWER = "8, The crowd cheers as the player scores a goal."
# An upper bound: training stops earlier, once every corpus word is a single token.
MAX_VOCAB_SIZE = 1024
# Hugging Face's initializer_range for SmolVLM2.
INIT_STD = 0.02
# Logit scale of a steered model's answer: far above anything a zero row can reach.
STEERING_GAIN = 50.0

# Training text for the tokenizer: the words the project's prompts and replies use, so a
# random model's output decodes to English words and digits rather than stray bytes.
CORPUS = (
    "You are provided the following series of frames from a video.",
    "Describe what happens in the video. Answer in one short sentence.",
    "List the highlights of this video with their start and end time in seconds.",
    "Count the repetitions of each exercise: squat, push up, lunge, plank, jump, burpee.",
    "The person is running, walking, jumping, lifting weights and stretching on a mat.",
    "A man and a woman play football in the park while a dog runs across the green field.",
    "The crowd cheers as the player scores a goal in the last minute of the match.",
    "The camera shows a city street at night with cars, lights, people and a red bus.",
    "Return only JSON with the keys start, end, label, score, reps and confidence.",
    'Example: {"start": 12.5, "end": 18.0, "label": "goal", "score": 0.9, "reps": 10}',
    "Frame from 00:00:05. Frame from 00:01:30. The clip lasts 2 minutes and 45 seconds.",
    "There is no highlight here. The scene is quiet, dark and nothing moves.",
    "First, then, next, finally: the athlete warms up, trains hard, rests and cools down.",
    "Yes. No. Maybe. I cannot tell from these frames what the people are doing.",
    "one two three four five six seven eight nine ten eleven twelve twenty hundred",
    "0 1 2 3 4 5 6 7 8 9 10 15 20 25 30 45 60 90 100 250 1000 3.5 0.25 12:30",
)


def _train_tokenizer() -> Tokenizer:
    """A byte-level BPE like SmolLM2's (digits split one by one), trained on `CORPUS`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MAX_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        # Every byte stays encodable, so any prompt tokenizes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def _silenced_token_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids a random reply should never contain.

    Kept: a space and a whole corpus word, a digit, or punctuation. Silenced: special tokens
    (image markers, end of turn), stray bytes, word pieces and words glued to the previous one.
    """
    words = set(re.findall(r"[A-Za-z]+", " ".join(CORPUS)))
    keep = {f" {word}" for word in words} | set("0123456789.,:")
    return [
        token_id
        for token_id in range(tokenizer.get_vocab_size(with_added_tokens=True))
        if tokenizer.id_to_token(token_id) in SPECIAL_TOKENS
        or tokenizer.decode([token_id]) not in keep
    ]


def _model_config(size: ModelSize, vocab_size: int, image_token_id: int, eos_token_id: int) -> dict:
    return {
        "architectures": ["SmolVLMForConditionalGeneration"],
        "model_type": "smolvlm",
        "image_token_id": image_token_id,
        "scale_factor": size.scale_factor,
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_intermediate,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.text_kv_heads,
            "num_hidden_layers": size.text_layers,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "max_position_embeddings": 8192,
            "vocab_size": vocab_size,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "smolvlm_vision",
            # Keep hidden_size >= patch_size: the weight sanitizer infers the patch
            # embedding's layout from which dimension is largest.
            "hidden_size": size.vision_hidden,
            "intermediate_size": size.vision_intermediate,
            "num_attention_heads": size.vision_heads,
            "num_hidden_layers": size.vision_layers,
            "image_size": size.image_size,
            "patch_size": size.patch_size,
            "num_channels": 3,
            "layer_norm_eps": 1e-6,
        },
    }


def _random_weights(config: dict, seed: int, silenced_ids: list[int]) -> dict:
    """Weights for the real SmolVLM model, initialised the way Hugging Face does.

    Matrices are N(0, 0.02), biases 0, norm scales 1, each drawn from its own key split off
    `seed`, so the bytes depend only on the seed (not on MLX's global random state).
    The output rows of `silenced_ids` are zero, so their logits (0) never beat the largest
    random logit: a reply is words and numbers, never an image marker or an end of turn.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models import smolvlm

    model_config = smolvlm.ModelConfig.from_dict(config)
    model_config.text_config = smolvlm.TextConfig.from_dict(config["text_config"])
    model_config.vision_config = smolvlm.VisionConfig.from_dict(config["vision_config"])
    model = smolvlm.Model(model_config)

    # tree_flatten is typed as a list or a dict (a dict only into a dict `destination`).
    parameters = cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters()))
    shapes = sorted(parameters, key=lambda item: item[0])
    keys = mx.random.split(mx.random.key(seed), len(shapes))
    weights = {}
    for key, (name, value) in zip(keys, shapes, strict=True):
        if value.ndim >= 2:
            weights[name] = INIT_STD * mx.random.normal(value.shape, key=key)
        elif name.endswith(".bias"):
            weights[name] = mx.zeros(value.shape)
        else:
            weights[name] = mx.ones(value.shape)
    lm_head = "language_model.lm_head.weight"
    keep = mx.ones((weights[lm_head].shape[0], 1))
    keep[mx.array(silenced_ids)] = 0.0
    weights[lm_head] = weights[lm_head] * keep
    mx.eval(weights)
    return weights


def _steer_to_answer(weights: dict, answer_ids: list[int], eos_id: int) -> dict:
    """Set the text model's weights so that every reply is exactly `answer_ids`, then the end.

    Random weights answer with random words, so no end-to-end run would ever find a
    highlight. A steered model is the same architecture on the same load and generate
    path, with weights chosen instead of drawn: the attention and MLP blocks write
    nothing to the residual stream, so the last hidden state is the current token's
    embedding. Embedding dimension 0 is 1 for every token, and dimension k (1..n) is 1
    only for the k-th answer token. The output head reads the first answer token from
    dimension 0, and from dimension k (twice as strongly) the token after the k-th, or
    the end after the last: after any other token the answer starts, inside it the next
    token follows. So the answer's tokens must be distinct.
    """
    import mlx.core as mx

    steered = dict(weights)
    for name, value in weights.items():
        if name.startswith("language_model.layers.") and name.endswith(
            ("self_attn.o_proj.weight", "mlp.down_proj.weight")
        ):
            steered[name] = mx.zeros(value.shape, dtype=value.dtype)
    embed = weights["language_model.embed_tokens.weight"]
    markers = mx.zeros((embed.shape[0], len(answer_ids)), dtype=embed.dtype)
    markers[mx.array(answer_ids), mx.arange(len(answer_ids))] = 1.0
    steered["language_model.embed_tokens.weight"] = mx.concatenate(
        [mx.ones((embed.shape[0], 1), dtype=embed.dtype), markers, embed[:, 1 + len(answer_ids) :]],
        axis=1,
    )
    head = mx.zeros(weights["language_model.lm_head.weight"].shape, dtype=embed.dtype)
    head[answer_ids[0], 0] = STEERING_GAIN
    for position, next_id in enumerate([*answer_ids[1:], eos_id], start=1):
        head[next_id, position] = 2 * STEERING_GAIN
    steered["language_model.lm_head.weight"] = head
    mx.eval(steered)
    return steered


def build_tiny_model(
    directory: Path, seed: int = 0, answer: str | None = None, size: str = "tiny"
) -> Path:
    """Write a random-weight SmolVLM2 of `size` (see SIZES) into `directory` and return it.

    Weights are random, or, with `answer`, steered so that every reply is that text (see
    `_steer_to_answer`); full sizes are steered to FULL_SIZE_ANSWER unless told otherwise.
    Offline and deterministic: the same arguments give byte-identical files. The folder
    has the layout of a converted SmolVLM2 checkpoint and loads with `mlx_vlm.load(directory)`.
    """
    import mlx.core as mx

    dims = SIZES[size]
    if answer is None and size != "tiny":
        answer = FULL_SIZE_ANSWER
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer()
    token_count = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab_size = dims.vocab_size or token_count
    image_token_id = _special_token_id(tokenizer, "<image>")
    eos_token_id = _special_token_id(tokenizer, "<end_of_utterance>")
    config = _model_config(dims, vocab_size, image_token_id, eos_token_id)
    # Rows past the tokenizer's tokens (a real-size vocabulary) decode to nothing: silenced.
    silenced = _silenced_token_ids(tokenizer) + list(range(token_count, vocab_size))
    weights = _random_weights(config, seed, silenced)
    if dims.dtype != "float32":
        weights = {name: value.astype(getattr(mx, dims.dtype)) for name, value in weights.items()}
    if answer is not None:
        weights = _steer_to_answer(weights, _answer_ids(tokenizer, answer), eos_token_id)

    tokenizer.save(str(directory / "tokenizer.json"))
    mx.save_safetensors(str(directory / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_json(directory / "config.json", config)
    _write_json(directory / "tokenizer_config.json", _tokenizer_config())
    _write_json(directory / "special_tokens_map.json", _special_tokens_map())
    _write_json(directory / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_json(directory / "preprocessor_config.json", _preprocessor_config(dims.image_size))
    _write_json(
        directory / "processor_config.json",
        {"image_seq_len": dims.image_seq_len, "processor_class": "SmolVLMProcessor"},
    )
    return directory


def _special_token_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of one of SPECIAL_TOKENS, which the training put in the vocabulary."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the trained tokenizer lacks the special token {token}")
    return token_id


def _answer_ids(tokenizer: Tokenizer, answer: str) -> list[int]:
    """The token ids of a steered answer; ValueError if steering cannot give exactly it."""
    ids = tokenizer.encode(answer).ids
    # The chat template ends every prompt with "Assistant:"; a ":" in the answer would
    # make the model start the answer after its own ":" instead of at the beginning.
    prompt_end = tokenizer.encode("Assistant:").ids[-1]
    if not ids or len(set(ids)) != len(ids) or prompt_end in ids:
        raise ValueError(
            "answer must be short text of distinct tokens without ':' "
            f"(got {answer!r}: tokens {[tokenizer.id_to_token(i) for i in ids]})"
        )
    if tokenizer.decode(ids) != answer:
        raise ValueError(f"answer {answer!r} does not round-trip through the tokenizer")
    return ids


def _special_tokens_map() -> dict:
    return {
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
    }


def _tokenizer_config() -> dict:
    return {
        "tokenizer_class": "GPT2Tokenizer",
        **_special_tokens_map(),
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
    }


def _preprocessor_config(image_size: int) -> dict:
    return {
        "image_processor_type": "SmolVLMImageProcessor",
        "processor_class": "SmolVLMProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": 2 * image_size},
        "max_image_size": {"longest_edge": image_size},
        "do_image_splitting": True,
        "resample": 1,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command line: build the tiny model into DIR and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m inference_worker.tiny_model",
        description="Build a random-weight SmolVLM2 (real architecture) for offline use.",
    )
    parser.add_argument("directory", type=Path, help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument(
        "--answer", help="the text every reply will be (weights steered instead of random)"
    )
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="tiny (default, for tests) or a real SmolVLM2-Video size, for measuring",
    )
    args = parser.parse_args(argv)
    print(build_tiny_model(args.directory, seed=args.seed, answer=args.answer, size=args.size))


if __name__ == "__main__":
    main()
