"""What an analysis is handed by its caller: the model to call and a reporter to tell.

Both are narrow on purpose: tests drive an analysis with scripted replies and a
recording reporter, and the analyses never see mlx, video files or the event channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from protocol import PartialItem, PartialKind


class Generate(Protocol):
    """The one seam to the model: a prompt and frames in, the reply text out."""

    def __call__(self, prompt: str, frames: Sequence[Image.Image], max_tokens: int, /) -> str:
        """The model's reply to `prompt` about `frames` (possibly none), at most `max_tokens`."""


class GenerateBatch(Protocol):
    """The seam for several questions at once: row i is `prompts[i]` about `frame_sets[i]`."""

    def __call__(
        self,
        prompts: Sequence[str],
        frame_sets: Sequence[Sequence[Image.Image]],
        max_tokens: int,
        /,
    ) -> list[str]:
        """One reply per row, in order, each the one `Generate` would give for that row."""


class Reporter(Protocol):
    """Receives an analysis's progress and its results as they are found."""

    def progress(self, fraction: float, step: str) -> None:
        """`fraction` of this analysis's work done, in [0, 1] and never lower than before."""

    def partial(self, kind: PartialKind, item: PartialItem) -> None:
        """One finished item of the results list `kind` (a judged segment, a highlight...)."""


class StepProgress:
    """Reports progress through a `Reporter`, clamped to [0, 1] and never going down.

    The analyses learn the real number of segments only as they consume them, so a
    recomputed fraction could otherwise dip when a caller's count was too low.
    """

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self._last = 0.0

    def report(self, fraction: float, step: str) -> None:
        """Send `fraction` (or the highest sent so far, if that is higher) with `step`."""
        self._last = max(self._last, min(max(fraction, 0.0), 1.0))
        self._reporter.progress(self._last, step)
