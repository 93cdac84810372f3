"""Put one question per segment to the model: one call each, or several segments per call.

On GPUs and Apple silicon a decode step is bound by reading the weights, so one batched
step serves every segment of the batch for about the price of one. On a CPU the vision
tower and prefill dominate a segment: 4 whole SmolVLM2-500M segments took 0.92x as long
batched on a 2-core host (`make bench-model`), while each segment's result would reach the
client only when its whole batch is done (~90 s instead of ~25 s for the first). So the
worker batches on a GPU and judges one segment at a time on a CPU, unless
SMOLVLM_BATCH_SEGMENTS says otherwise.

Either way an analysis sees the same thing: each segment's reply in time order, with its
`starting` callback called just before each segment's turn, so progress and partial events
come per segment and in the same order as one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from inference_worker.reporting import Generate, GenerateBatch
from inference_worker.timeline import SegmentFrames

# SMOLVLM_BATCH_SEGMENTS=N judges N segments per model call (1: one at a time), whatever
# the device; unset, the device decides.
BATCH_ENV = "SMOLVLM_BATCH_SEGMENTS"
# Segments per call on a GPU: a few rows keep each segment's partial event close behind
# it while already sharing most of the weight reads.
GPU_BATCH = 4


@dataclass(frozen=True)
class Batching:
    """Judge up to `size` segments in one `generate_batch` call."""

    generate_batch: GenerateBatch
    size: int


def segments_per_call(on_gpu: bool) -> tuple[int, str]:
    """How many segments to judge per model call on this host, and why (for the log)."""
    setting = os.environ.get(BATCH_ENV, "").strip()
    if setting:
        if setting.isdigit() and int(setting) >= 1:
            return int(setting), f"{BATCH_ENV}={setting}"
        default, why = _by_device(on_gpu)
        return default, f"{why}; {BATCH_ENV}={setting!r} ignored: not a whole number >= 1"
    return _by_device(on_gpu)


def _by_device(on_gpu: bool) -> tuple[int, str]:
    if on_gpu:
        return GPU_BATCH, "GPU: one decode step reads the weights once for every segment"
    return 1, "CPU: batching gains little here (vision and prefill dominate) and delays results"


def describe(size: int, why: str) -> str:
    """The worker's log line for the choice `segments_per_call` made."""
    how = "one at a time" if size == 1 else f"up to {size} per model call (batched)"
    return f"segments judged {how} ({why})"


def judged(
    generate: Generate,
    batching: Batching | None,
    segments: Iterable[SegmentFrames],
    prompt_for: Callable[[SegmentFrames], str],
    max_tokens: int,
    starting: Callable[[int], None],
) -> Iterator[tuple[SegmentFrames, str, str]]:
    """Each segment, its prompt `prompt_for(segment)` and the model's reply, in order.

    `starting(number)` (1-based) is called just before each segment's turn: before the call
    that judges it, or, for the later segments of a batch, just before their reply is
    yielded. So a caller reporting progress there and results per yield emits the same
    events in the same order either way. `segments` is pulled one batch at a time.
    """
    size = batching.size if batching is not None else 1
    numbered = enumerate(segments, start=1)
    while batch := list(islice(numbered, size)):
        starting(batch[0][0])
        prompts = [prompt_for(item) for _, item in batch]
        if batching is None or len(batch) == 1:
            replies = [generate(prompts[0], batch[0][1].frames, max_tokens)]
        else:
            frame_sets = [item.frames for _, item in batch]
            replies = batching.generate_batch(prompts, frame_sets, max_tokens)
        answered = zip(batch, prompts, replies, strict=True)
        for index, ((number, item), prompt, reply) in enumerate(answered):
            if index:
                starting(number)
            yield item, prompt, reply
