"""SmolVLM2 behind one seam: `SmolVLM.generate(prompt, frames, max_tokens) -> str`, and its
batched counterpart `SmolVLM.generate_batch(prompts, frame_sets, max_tokens) -> [str]`.

The only module that calls mlx_vlm. It is imported early by the worker, so mlx_vlm (about a
second to import) is imported inside the functions that need it.

The vision tower is most of a call's cost (77% of a segment at the real size on a CPU), so
its output for a frame can be kept for a job's later prompts showing the same frame
(`SmolVLM.features_kept`); mlx_vlm's SmolVLM path takes such `cached_image_features` and
skips the tower.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from protocol import looks_like_hf_id, model_display_name

if TYPE_CHECKING:
    from PIL import Image

_FIX_LOCAL = "point SMOLVLM_MODEL / --model at a folder holding a converted SmolVLM2 model"


class ModelUnavailable(Exception):
    """The model cannot be loaded. The message names it by display name and says how to fix it.

    Safe to show to API clients: it never contains a server path.
    """


@dataclass(frozen=True)
class GenerationStats:
    """Figures from the last `SmolVLM.generate` call, for logging."""

    prompt_tokens: int
    generation_tokens: int
    # Peak MLX memory during the call, in GB (as mlx_vlm reports it).
    peak_memory: float


@dataclass
class GenerationTotals:
    """What `SmolVLM.generate` has done since load; the job logs its share at its end."""

    calls: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0

    def since(self, earlier: GenerationTotals) -> str:
        """The calls and tokens after `earlier`, as one phrase for the log."""
        return (
            f"{self.calls - earlier.calls} model calls, "
            f"{self.prompt_tokens - earlier.prompt_tokens} prompt tokens, "
            f"{self.generation_tokens - earlier.generation_tokens} tokens generated"
        )


class SmolVLM:
    """A loaded SmolVLM2: model and processor, used through `generate`."""

    def __init__(
        self, name: str, model: Any, processor: Any, compute: str, on_gpu: bool = False
    ) -> None:
        self.name = name
        self._model = model
        self._processor = processor
        self.image_size = _frame_size(model, processor)
        # How the arithmetic runs on this host (device, weight dtype, BLAS), for the log.
        self.compute = compute
        # Whether MLX runs on a GPU (Metal, CUDA): there batched decoding pays.
        self.on_gpu = on_gpu
        self.last_stats: GenerationStats | None = None
        self.totals = GenerationTotals()
        # Frames run through the vision tower since load: what `features_kept` saves.
        self.frames_encoded = 0
        # Frame key -> its features (None until first computed), within `features_kept`.
        self._kept: dict[str, Any] = {}

    @contextmanager
    def features_kept(self, frames: Sequence[Image.Image]) -> Iterator[None]:
        """Within the block, each of `frames` goes through the vision tower at most once.

        A prompt showing such a frame (the same pixels) again reuses its features. Other
        frames are encoded per call and not kept, so memory stays bounded by `frames`.
        """
        self._kept = {_frame_key(frame): None for frame in frames}
        try:
            yield
        finally:
            self._kept = {}

    def generate(self, prompt: str, frames: Sequence[Image.Image], max_tokens: int) -> str:
        """Answer `prompt` about `frames` (in order; none for a text-only prompt), greedily.

        Deterministic: temperature 0. Returns the reply stripped of surrounding whitespace.
        """
        import mlx.core as mx
        from mlx_vlm import apply_chat_template
        from mlx_vlm import generate as mlx_generate

        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        images = list(frames)
        # One <image> marker per frame: the processor refuses a count mismatch. Typed as
        # text or messages; without return_messages it is the rendered text.
        formatted = cast(
            str,
            apply_chat_template(
                self._processor, self._model.config, prompt, num_images=len(images)
            ),
        )
        # mlx_vlm reports the process-wide peak; reset it so the figure is this call's.
        mx.reset_peak_memory()
        features = {"cached_image_features": self._image_features(images)} if images else {}
        result = mlx_generate(
            self._model,
            self._processor,
            formatted,
            # Declared as paths only; mlx_vlm's load_image takes PIL images as they are.
            image=images or None,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
            verbose=False,
            **features,
        )
        self.last_stats = GenerationStats(
            prompt_tokens=result.prompt_tokens,
            generation_tokens=result.generation_tokens,
            peak_memory=result.peak_memory,
        )
        self.totals.calls += 1
        self.totals.prompt_tokens += result.prompt_tokens
        self.totals.generation_tokens += result.generation_tokens
        return result.text.strip()

    def generate_batch(
        self, prompts: Sequence[str], frame_sets: Sequence[Sequence[Image.Image]], max_tokens: int
    ) -> list[str]:
        """Answer each prompt about its frames, all rows decoded together; one reply each.

        Row i is `prompts[i]` about `frame_sets[i]`, and its reply is the one `generate` gives
        (greedy), so a caller may pick either path. Each decode step reads the weights once
        for every row: on GPUs and Apple silicon, where decoding is bound by that read, B rows
        cost about what one does. Vision features are computed per row as in `generate`.
        """
        import mlx.core as mx
        from mlx_vlm.generate import BatchGenerator

        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if len(prompts) != len(frame_sets):
            raise ValueError(f"{len(prompts)} prompts for {len(frame_sets)} sets of frames")
        if not prompts:
            return []
        if getattr(self._model.language_model, "one_prompt_at_a_time", False):
            return self._rows_in_turn(prompts, frame_sets, max_tokens)
        mx.reset_peak_memory()
        rows = [
            self._prompt_row(prompt, list(frames))
            for prompt, frames in zip(prompts, frame_sets, strict=True)
        ]
        token_rows = [tokens for tokens, _ in rows]
        row_inputs = [{"inputs_embeds": embeddings} for _, embeddings in rows]
        batch = BatchGenerator(
            self._model.language_model,
            self._processor,
            max_tokens=max_tokens,
            prefill_batch_size=len(token_rows),
            completion_batch_size=len(token_rows),
            compute_logprobs=False,
        )
        try:
            uids = batch.insert(token_rows, max_tokens, prompt_kwargs=row_inputs)
            tokens: dict[int, list[int]] = {uid: [] for uid in uids}
            while batch.has_work:
                _, responses = batch.next()
                for response in responses:
                    if response.finish_reason != "stop":  # "stop" comes with the EOS token
                        tokens[response.uid].append(response.token)
        finally:
            batch.close()
        replies = [self._detokenized(tokens[uid]) for uid in uids]
        generated = sum(len(row) for row in tokens.values())
        prompt_tokens = sum(len(row) for row in token_rows)
        self.last_stats = GenerationStats(prompt_tokens, generated, mx.get_peak_memory() / 1e9)
        self.totals.calls += 1  # one model call, however many rows
        self.totals.prompt_tokens += prompt_tokens
        self.totals.generation_tokens += generated
        return replies

    def _rows_in_turn(
        self, prompts: Sequence[str], frame_sets: Sequence[Sequence[Image.Image]], max_tokens: int
    ) -> list[str]:
        """`generate_batch` for a CPU host's numpy text model (cpu_kernels), which takes one
        prompt per call: the rows in turn, counted as one call, as a batch is. Batching
        would save little there: decoding is a small share of a call on a CPU."""
        calls = self.totals.calls
        replies, stats = [], []
        for prompt, frames in zip(prompts, frame_sets, strict=True):
            replies.append(self.generate(prompt, frames, max_tokens))
            assert self.last_stats is not None
            stats.append(self.last_stats)
        self.totals.calls = calls + 1
        self.last_stats = GenerationStats(
            prompt_tokens=sum(row.prompt_tokens for row in stats),
            generation_tokens=sum(row.generation_tokens for row in stats),
            peak_memory=max(row.peak_memory for row in stats),
        )
        return replies

    def _prompt_row(self, prompt: str, images: list[Image.Image]) -> tuple[list[int], Any]:
        """One batch row: the prompt's token ids and its input embeddings (frames included).

        The same tokens and embeddings as mlx_vlm's one-prompt path builds for `generate`.
        """
        from mlx_vlm import apply_chat_template, prepare_inputs
        from mlx_vlm.utils import should_add_special_tokens

        formatted = apply_chat_template(
            self._processor, self._model.config, prompt, num_images=len(images)
        )
        inputs = prepare_inputs(
            self._processor,
            images=images or None,
            prompts=formatted,
            image_token_index=self._model.config.image_token_index,
            add_special_tokens=should_add_special_tokens(
                self._model.config.model_type, self._processor
            ),
        )
        features = {"cached_image_features": self._image_features(images)} if images else {}
        embeddings = self._model.get_input_embeddings(
            inputs["input_ids"],
            inputs.get("pixel_values"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            **features,
        )
        return inputs["input_ids"][0].tolist(), embeddings.inputs_embeds

    def _detokenized(self, tokens: list[int]) -> str:
        detokenizer = self._processor.detokenizer
        detokenizer.reset()
        for token in tokens:
            detokenizer.add_token(token)
        detokenizer.finalize()
        return detokenizer.text.strip()

    def _image_features(self, images: list[Image.Image]) -> Any:
        """The language-model inputs for `images`, in order: (frames x tokens, width).

        Frames kept by `features_kept` are encoded once; the rest in one batch per call.
        """
        import mlx.core as mx

        keys = [_frame_key(image) for image in images]
        distinct = dict(zip(keys, images, strict=True))
        todo = {key: image for key, image in distinct.items() if self._kept.get(key) is None}
        encoded = dict(zip(todo, self._encode(list(todo.values())), strict=True))
        for key in encoded.keys() & self._kept.keys():
            self._kept[key] = encoded[key]
        return mx.concatenate([encoded[key] if key in encoded else self._kept[key] for key in keys])

    def _encode(self, images: list[Image.Image]) -> list[Any]:
        """Run `images` through the processor, vision tower and connector: one array each.

        Goes through the model's own `get_input_embeddings`, with a prompt of nothing but
        image tokens, so the features are exactly those mlx_vlm would put in the prompt.
        """
        import mlx.core as mx

        if not images:
            return []
        pixels = self._processor(images=[images])
        tokens = len(images) * self._processor.image_seq_len
        image_tokens = mx.full((1, tokens), self._model.config.image_token_index, mx.int32)
        embeddings = self._model.get_input_embeddings(
            image_tokens,
            pixels["pixel_values"],
            pixel_attention_mask=pixels.get("pixel_attention_mask"),
        ).inputs_embeds[0]
        mx.eval(embeddings)
        self.frames_encoded += len(images)
        return list(embeddings.reshape(len(images), -1, embeddings.shape[-1]))

    def __repr__(self) -> str:
        return f"SmolVLM(name={self.name!r}, image_size={self.image_size})"


def _frame_key(image: Image.Image) -> str:
    """Identifies a frame by its pixels: the same picture gives the same vision features."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()


def load_model(model: str) -> SmolVLM:
    """Load a SmolVLM2 from a local folder or a Hugging Face id; raise ModelUnavailable if not.

    A local path is never sent to the hub: a missing folder fails at once. A Hugging Face id is
    fetched by mlx_vlm (from the local cache when HF_HUB_OFFLINE=1).
    """
    if not model.strip():
        raise ModelUnavailable(f"no model was given; {_FIX_LOCAL} or at a Hugging Face id")
    name = model_display_name(model)
    if looks_like_hf_id(model):
        path = _fetch_from_hub(model)
        subject = f"model '{name}'"
    else:
        path = Path(model).expanduser()
        subject = f"model folder '{name}'"
        if not path.exists():
            raise ModelUnavailable(f"{subject} does not exist; {_FIX_LOCAL}")
        if not path.is_dir():
            raise ModelUnavailable(f"{subject} is not a folder; {_FIX_LOCAL}")

    from inference_worker.compute import adapt_for_host, use_fast_blas

    blas = use_fast_blas()  # before mlx_vlm imports mlx: MLX binds its BLAS when it loads
    from mlx_vlm import load

    try:
        # A str that exists on disk: mlx_vlm loads it without any hub request.
        loaded_model, processor = load(str(path))
    except Exception as exc:
        # The cause may quote server paths; it stays in the chained traceback for the logs.
        raise ModelUnavailable(
            f"{subject} could not be loaded ({type(exc).__name__}); it does not look like a "
            "complete SmolVLM2 model for mlx-vlm (config.json, *.safetensors, tokenizer and "
            "processor files)"
        ) from exc
    # Video frames go in whole: splitting each into tiles costs about 4x the image tokens.
    processor.image_processor.do_image_splitting = False
    compute = f"{adapt_for_host(loaded_model)}; BLAS: {blas.describe()}"
    import mlx.core as mx

    on_gpu = mx.default_device() != mx.cpu
    return SmolVLM(name, loaded_model, processor, compute, on_gpu)


def _fetch_from_hub(model_id: str) -> Path:
    """The local snapshot folder of `model_id`, downloading it if downloads are allowed."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    from mlx_vlm.utils import get_model_path

    download_first = f"Download it first (huggingface-cli download {model_id}) or {_FIX_LOCAL}."
    try:
        return Path(get_model_path(model_id))
    except LocalEntryNotFoundError as exc:
        why = (
            "downloads are off"
            if constants.is_offline_mode()
            else "the Hugging Face Hub could not be reached"
        )
        raise ModelUnavailable(
            f"model '{model_id}' could not be loaded: it is not in the local Hugging Face cache "
            f"and {why}. {download_first}"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelUnavailable(
            f"model '{model_id}' could not be loaded: the Hugging Face Hub has no such model, "
            f"or it is private or gated. Check the id, or {_FIX_LOCAL}."
        ) from exc
    except Exception as exc:
        raise ModelUnavailable(
            f"model '{model_id}' could not be downloaded ({type(exc).__name__}). {download_first}"
        ) from exc


def _frame_size(model: Any, processor: Any) -> int:
    """The longest edge the processor gives the vision tower, in pixels.

    With image splitting off, every frame is resized to this square, so decoding frames any
    larger only wastes time.
    """
    max_image_size = getattr(processor.image_processor, "max_image_size", None) or {}
    if "longest_edge" in max_image_size:
        return int(max_image_size["longest_edge"])
    return int(model.config.vision_config.image_size)


__all__ = ["GenerationStats", "GenerationTotals", "ModelUnavailable", "SmolVLM", "load_model"]
