"""Test doubles for the analyses: a model that answers from a script (one question per call,
or a batch), a reporter that records."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from inference_worker.timeline import SegmentFrames, plan_segments
from protocol import PartialItem, PartialKind


@dataclass(frozen=True)
class Call:
    """One call the analysis made to the model."""

    prompt: str
    frame_count: int
    max_tokens: int
    # How many rows the model call that asked this had: 1 for `generate`.
    rows: int = 1


class ScriptedModel:
    """Stands in for `generate`: answers with queued replies or `respond(prompt)`.

    Queued replies are used first, in order; then `respond`, if given. Running out of
    both is a test failure, so a test states every reply the analysis will get. Every
    call is recorded in `calls`, and in `events` (as "generate") when a shared event
    log is passed, to order calls against other things the test records.
    """

    def __init__(
        self,
        replies: Sequence[str] = (),
        respond: Callable[[str], str] | None = None,
        events: list[str] | None = None,
    ) -> None:
        self._replies = list(replies)
        self._respond = respond
        self._events = events
        self.calls: list[Call] = []

    def __call__(self, prompt: str, frames: Sequence[Image.Image], max_tokens: int) -> str:
        self.calls.append(Call(prompt, len(frames), max_tokens))
        if self._events is not None:
            self._events.append("generate")
        return self._reply(prompt)

    def batch(
        self,
        prompts: Sequence[str],
        frame_sets: Sequence[Sequence[Image.Image]],
        max_tokens: int,
    ) -> list[str]:
        """Stands in for `generate_batch`: each row answered as a `generate` call would be.

        Rows take the script's replies in row order and are recorded in `calls` with their
        batch's `rows`; `events` gets one "generate batch of <n>".
        """
        assert len(prompts) == len(frame_sets), "one set of frames per prompt"
        if self._events is not None:
            self._events.append(f"generate batch of {len(prompts)}")
        replies = []
        for prompt, frames in zip(prompts, frame_sets, strict=True):
            self.calls.append(Call(prompt, len(frames), max_tokens, rows=len(prompts)))
            replies.append(self._reply(prompt))
        return replies

    def _reply(self, prompt: str) -> str:
        if self._replies:
            return self._replies.pop(0)
        if self._respond is not None:
            return self._respond(prompt)
        raise AssertionError(f"ScriptedModel has no reply left for call {len(self.calls)}")


@dataclass
class RecordingReporter:
    """Records progress as (fraction, step) pairs and partials as (kind, item), in order.

    With a shared `events` log, each partial is also logged there as "partial <kind>".
    """

    steps: list[tuple[float, str]] = field(default_factory=list)
    partials: list[tuple[PartialKind, PartialItem]] = field(default_factory=list)
    events: list[str] | None = None

    def progress(self, fraction: float, step: str) -> None:
        self.steps.append((fraction, step))

    def partial(self, kind: PartialKind, item: PartialItem) -> None:
        self.partials.append((kind, item))
        if self.events is not None:
            self.events.append(f"partial {kind.value}")

    def items(self, kind: PartialKind) -> list[PartialItem]:
        """The partial items sent for the results list `kind`, in order."""
        return [item for sent, item in self.partials if sent is kind]


def blank_frames(count: int) -> list[Image.Image]:
    """Small blank frames: the analyses never look inside them."""
    return [Image.new("RGB", (8, 8)) for _ in range(count)]


def segment_frames(
    duration: float,
    segment_seconds: float = 10.0,
    frames_per_segment: int = 4,
    pulls: list[str] | None = None,
) -> Iterator[SegmentFrames]:
    """A generator of SegmentFrames, as the worker's decode-ahead produces them.

    With `pulls`, each segment taken from it is logged as "pull <index>" just before it
    is handed over, so a test can see that segments are pulled one at a time.
    """
    for segment in plan_segments(duration, segment_seconds):
        if pulls is not None:
            pulls.append(f"pull {segment.index}")
        yield SegmentFrames(segment, blank_frames(frames_per_segment))


@dataclass
class OrderReporter:
    """Records progress steps and partials in one list, in the order they came."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def progress(self, fraction: float, step: str) -> None:
        self.events.append(("progress", (fraction, step)))

    def partial(self, kind: PartialKind, item: PartialItem) -> None:
        self.events.append(("partial", (kind, item)))
