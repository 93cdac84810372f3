"""Find a video's highlights, after the SmolVLM2 HighlightGenerator approach.

1. Describe the whole video from a few overview frames.
2. From that description, decide what counts as a highlight in this kind of video.
3. Judge each segment against those criteria: a significance 1-10 and one sentence,
   in one model call per segment.
4. Keep the significant segments, merge neighbours, keep the most significant few.

The model is reached only through `generate(prompt, frames, max_tokens) -> str` and, when
segments are judged in batches, `generate_batch` (inference_worker/judging.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from inference_worker.judging import Batching, judged
from inference_worker.replies import (
    parse_criteria,
    parse_description,
    parse_significance,
    strip_echo,
)
from inference_worker.reporting import Generate, Reporter, StepProgress
from inference_worker.timeline import Segment, SegmentFrames, format_timestamp, span_fields
from protocol import Highlight, HighlightFound, PartialKind, TimelineEntry

# Two or three sentences; a longer answer from a small model adds latency and drift.
DESCRIBE_TOKENS = 160
# About five short lines of criteria.
CRITERIA_TOKENS = 96
# A score line and one sentence.
VERDICT_TOKENS = 64

# Sentences kept of the video description; it is repeated in every segment prompt.
DESCRIPTION_SENTENCES = 3
DESCRIPTION_CHARS = 400

FALLBACK_VIDEO_DESCRIPTION = "The model could not describe this video."
# What the HighlightGenerator's segment judge looks for when no criteria could be read.
FALLBACK_CRITERIA = [
    "a display of skill",
    "a moment of tension or surprise",
    "a strong emotional reaction",
    "a decisive or climactic action",
]

DESCRIBE_PROMPT = (
    "These frames are taken in order from one video. What type of video is this and what "
    "is happening in it? Be specific about the kind of content and the main activities. "
    "Answer in two or three sentences."
)


def criteria_prompt(video_description: str | None) -> str:
    """Ask which archetypal moments would make highlights in a video like the one described."""
    context = (
        f"Here is a description of a video:\n{video_description}\n\n" if video_description else ""
    )
    return (
        f"You are a highlight editor. {context}"
        "List up to 5 moments that would make compelling highlights if they appear in this "
        "video. Each should be specific enough to recognise but could happen in any video "
        'of this kind. Write one short moment per line, each starting with "- ".'
    )


def segment_prompt(video_description: str | None, criteria: Sequence[str]) -> str:
    """Ask for one segment's significance and a one-sentence description, in a fixed format."""
    lines = [
        "You are a video highlight analyzer. "
        "These frames are taken in order from one part of a video."
    ]
    if video_description:
        lines.append(f"The whole video: {video_description}")
    lines.append("Moments that count as highlights in it:")
    lines.extend(f"- {criterion}" for criterion in criteria)
    lines.append(
        "How significant is this part as a highlight, compared with those moments, from 1 "
        "(nothing notable) to 10 (a must-see moment)? Reply in exactly this format:"
    )
    lines.append("Score: <number from 1 to 10>")
    lines.append("Description: <one sentence about the main action>")
    return "\n".join(lines)


@dataclass(frozen=True)
class HighlightSpan:
    """One highlight: a stretch of one or more adjacent significant segments (exact times)."""

    start: float
    end: float
    significance: int
    description: str

    def item(self) -> HighlightFound:
        """The highlight item of API.md results, without the thumbnail the caller adds."""
        return HighlightFound(
            **span_fields(self.start, self.end),
            significance=self.significance,
            description=self.description,
        )

    def with_thumbnail(self, thumbnail: str | None) -> Highlight:
        """The highlight of the results: the item and its thumbnail's file name."""
        return Highlight(
            **span_fields(self.start, self.end),
            significance=self.significance,
            description=self.description,
            thumbnail=thumbnail,
        )


@dataclass(frozen=True)
class JudgedSegment:
    """One segment as the model judged it; None where its reply could not be read."""

    start: float
    end: float
    significance: int | None
    description: str | None

    def item(self) -> TimelineEntry:
        """The timeline item of API.md highlights results."""
        return TimelineEntry(
            **span_fields(self.start, self.end),
            significance=self.significance,
            description=self.description,
        )


@dataclass(frozen=True)
class HighlightsAnalysis:
    """What the analysis found: the description and criteria it used, every judged segment
    (the timeline) and the highlights picked from them, both in time order."""

    video_description: str
    criteria: list[str]
    highlights: list[HighlightSpan]
    timeline: list[JudgedSegment]


def analyze_highlights(
    generate: Generate,
    overview: Sequence[Image.Image],
    segments: Iterable[SegmentFrames],
    segment_count: int,
    params: dict[str, Any],
    reporter: Reporter,
    *,
    batching: Batching | None = None,
) -> HighlightsAnalysis:
    """Describe the video, derive highlight criteria, judge each segment, pick highlights.

    `segments` is consumed one at a time (one batch at a time with `batching`), so its
    producer can decode ahead while the model judges. Batched or not, progress and
    partial events come per segment, in the same order. Each judged segment goes to
    `reporter.partial` as a timeline item at once; each highlight once the next segment
    does not extend it (see `_HighlightCollector` for the cap). Unusable model replies fall
    back to defaults; a segment whose score cannot be read is not significant.
    """
    progress = StepProgress(reporter)
    progress.report(0.0, "Describing the video")
    reply = generate(DESCRIBE_PROMPT, overview, DESCRIBE_TOKENS)
    description = parse_description(
        strip_echo(reply, DESCRIBE_PROMPT), DESCRIPTION_SENTENCES, DESCRIPTION_CHARS
    )

    progress.report(1 / (segment_count + 2), "Deciding what makes a highlight")
    prompt = criteria_prompt(description)
    # The criteria follow from the description alone, as in the HighlightGenerator.
    criteria = parse_criteria(strip_echo(generate(prompt, [], CRITERIA_TOKENS), prompt))
    criteria = criteria or list(FALLBACK_CRITERIA)

    collector = _HighlightCollector(params["min_significance"], params["max_highlights"], reporter)
    prompt = segment_prompt(description, criteria)
    timeline: list[JudgedSegment] = []

    def starting(number: int) -> None:
        count = max(segment_count, number)
        progress.report((number + 1) / (count + 2), f"Analyzing segment {number}/{count}")

    replies = judged(generate, batching, segments, lambda _: prompt, VERDICT_TOKENS, starting)
    for item, _, raw in replies:
        reply = strip_echo(raw, prompt)
        verdict = JudgedSegment(
            item.segment.start,
            item.segment.end,
            parse_significance(reply),
            parse_description(reply),
        )
        timeline.append(verdict)
        reporter.partial(PartialKind.TIMELINE, verdict.item())
        collector.add(item.segment, verdict.significance, verdict.description)
    collector.finish()
    progress.report(1.0, "Selecting highlights")
    return HighlightsAnalysis(
        video_description=description or FALLBACK_VIDEO_DESCRIPTION,
        criteria=criteria,
        highlights=collector.highlights(),
        timeline=timeline,
    )


@dataclass
class _Run:
    """Adjacent significant segments being merged into one highlight."""

    start: float
    end: float
    significance: int
    # The description of the most significant segment that had a usable one.
    best: tuple[int, str] | None

    def extend(self, segment: Segment, significance: int, description: str | None) -> None:
        self.end = segment.end
        self.significance = max(self.significance, significance)
        if description and (self.best is None or significance > self.best[0]):
            self.best = (significance, description)

    def highlight(self) -> HighlightSpan:
        description = (
            self.best[1] if self.best else f"Notable moment at {format_timestamp(self.start)}"
        )
        return HighlightSpan(self.start, self.end, self.significance, description)


class _HighlightCollector:
    """Merges significant segments as they arrive and reports each finished highlight.

    A finished highlight is sent as a partial only if it ranks within `max_highlights`
    of those found so far; a later, more significant one can still push it out of the
    final list, which is the authoritative one.
    """

    def __init__(self, min_significance: int, max_highlights: int, reporter: Reporter) -> None:
        self._min = min_significance
        self._max = max_highlights
        self._reporter = reporter
        self._run: _Run | None = None
        self._found: list[HighlightSpan] = []

    def add(self, segment: Segment, significance: int | None, description: str | None) -> None:
        """Take one judged segment, in time order."""
        if significance is None or significance < self._min:
            self._close()
            return
        if self._run is not None and math.isclose(self._run.end, segment.start, abs_tol=1e-6):
            self._run.extend(segment, significance, description)
            return
        self._close()
        best = (significance, description) if description else None
        self._run = _Run(segment.start, segment.end, significance, best)

    def finish(self) -> None:
        """No more segments: the open highlight, if any, is complete."""
        self._close()

    def highlights(self) -> list[HighlightSpan]:
        """The `max_highlights` most significant (earlier first on ties), in time order."""
        ranked = sorted(self._found, key=lambda h: (-h.significance, h.start))
        return sorted(ranked[: self._max], key=lambda h: h.start)

    def _close(self) -> None:
        if self._run is None:
            return
        highlight = self._run.highlight()
        self._run = None
        ahead = sum(1 for found in self._found if found.significance >= highlight.significance)
        self._found.append(highlight)
        if ahead < self._max:
            self._reporter.partial(PartialKind.HIGHLIGHTS, highlight.item())
