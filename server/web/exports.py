"""A session's highlights as an editor's timeline: OpenTimelineIO, CMX 3600 EDL, FCPXML.

One timeline of cuts from the uploaded file, at the video's own frame rate, built with
OpenTimelineIO and written by its adapters (`otio_json`, `cmx_3600` from
otio-cmx3600-adapter, `fcpx_xml` from otio-fcpx-xml-adapter). Each cut starts and ends
at the frame boundary nearest the highlight's times (the later one on a tie). Two gaps
of the adapters are closed here, each said where: an EDL has no rate of its own, so
timecode exists only at SMPTE rates, and the FCPXML writer knows frame durations only
from a small table.

No aiohttp here: `ExportRefused` says why a session cannot be exported; the handler maps it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import PurePosixPath
from xml.etree import ElementTree

import opentimelineio as otio

from protocol import HighlightFound, JobResults, VideoInfo, WorkerHighlightsResults


@dataclass(frozen=True)
class ExportFormat:
    name: str  # as in the URL
    adapter: str  # OpenTimelineIO's adapter name
    extension: str
    content_type: str


FORMATS = {
    "otio": ExportFormat("otio", "otio_json", "otio", "application/json"),
    "edl": ExportFormat("edl", "cmx_3600", "edl", "text/plain"),
    "fcpxml": ExportFormat("fcpxml", "fcpx_xml", "fcpxml", "application/xml"),
}
# The probe reports fps rounded to 3 decimals: a rate within this of a known one is it.
_RATE_TOLERANCE = 0.0005
# Where this server's own facts go in OTIO metadata (clips keep significance, description).
METADATA_KEY = "smolvlm_video_server"
_FCPXML_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n'


class ExportRefused(Exception):
    """The session's timeline cannot be written in the asked format; `str()` says why."""


class NoCuts(ExportRefused):
    """The session has no highlight to cut (none found, or a workout session)."""

    def __init__(self) -> None:
        super().__init__("This session has no highlights, so its timeline would have no cuts")


def cut_highlights(results: JobResults | None) -> list[HighlightFound]:
    """The highlights a session's timeline cuts; NoCuts for results without any (workout)."""
    if not isinstance(results, WorkerHighlightsResults):
        raise NoCuts()
    return list(results.highlights)


def frame_rate(fps: float) -> Fraction:
    """The exact rate behind the probe's rounded `fps`: 29.97 is 30000/1001, 25.0 is 25.

    NTSC rates (N*1000/1001: 23.976, 29.97, 59.94...) and whole rates are recognised;
    any other rate is kept as the nearest fraction with a denominator up to 1000.
    Raises ExportRefused for a video whose rate is unknown (0).
    """
    if not (fps > 0 and math.isfinite(fps)):
        raise ExportRefused("The video's frame rate is unknown, so it has no frames to cut at")
    whole = round(fps)
    if abs(fps - whole) <= _RATE_TOLERANCE:
        return Fraction(whole)
    ntsc = Fraction(round(fps * 1001 / 1000) * 1000, 1001)
    if abs(fps - ntsc) <= _RATE_TOLERANCE:
        return ntsc
    return Fraction(fps).limit_denominator(1000)


def frame_at(seconds: float, rate: Fraction) -> int:
    """The frame boundary nearest `seconds`, the later one on a tie.

    The API's times are decimal seconds (0.01 s steps), taken exactly as written.
    """
    return math.floor(Fraction(repr(float(seconds))) * rate + Fraction(1, 2))


def highlights_timeline(
    video: VideoInfo, highlights: Sequence[HighlightFound], *, session_id: str
) -> otio.schema.Timeline:
    """One video track: each highlight a clip cut from the uploaded file, back to back.

    Clips are named after the uploaded file and reference it by that name (an editor
    relinks it to the local copy). Highlights empty after snapping to frames are left out.
    """
    rate = frame_rate(video.fps)
    speed = float(rate)
    total = max(1, frame_at(video.duration_seconds, rate))
    media_range = otio.opentime.TimeRange(
        otio.opentime.RationalTime(0, speed), otio.opentime.RationalTime(total, speed)
    )
    timeline = otio.schema.Timeline(
        name=f"{video.filename} highlights",
        global_start_time=otio.opentime.RationalTime(0, speed),
        metadata={METADATA_KEY: {"sessionId": session_id, "frameRate": str(rate)}},
    )
    track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
    timeline.tracks.append(track)
    for item in highlights:
        start = min(frame_at(item.start, rate), total)
        end = min(frame_at(item.end, rate), total)
        if end <= start:
            continue
        track.append(
            otio.schema.Clip(
                name=video.filename,
                media_reference=otio.schema.ExternalReference(
                    target_url=video.filename, available_range=media_range
                ),
                source_range=otio.opentime.TimeRange(
                    otio.opentime.RationalTime(start, speed),
                    otio.opentime.RationalTime(end - start, speed),
                ),
                metadata={
                    METADATA_KEY: {
                        "start": item.start,
                        "end": item.end,
                        "significance": item.significance,
                        "description": item.description,
                    }
                },
            )
        )
    return timeline


def export_text(
    export: ExportFormat,
    video: VideoInfo,
    highlights: Sequence[HighlightFound],
    *,
    session_id: str,
) -> str:
    """The highlights' timeline written in `export`'s format.

    Raises NoCuts for a timeline without clips, ExportRefused when the format cannot
    hold the video's rate.
    """
    timeline = highlights_timeline(video, highlights, session_id=session_id)
    if not timeline.find_clips():
        raise NoCuts()
    rate = frame_rate(video.fps)
    if export.adapter == "cmx_3600":
        return _edl(timeline, rate)
    text = otio.adapters.write_to_string(timeline, export.adapter)
    if export.adapter == "fcpx_xml":
        return _exact_fcpxml_format(text, rate, video)
    return text


def _edl(timeline: otio.schema.Timeline, rate: Fraction) -> str:
    """CMX 3600 text; only SMPTE rates have timecode, so any other rate is refused."""
    if not otio.opentime.RationalTime.is_valid_timecode_rate(float(rate)):
        raise ExportRefused(
            f"A CMX 3600 EDL counts in SMPTE timecode, which exists only at 23.976, 24, 25, "
            f"29.97, 30, 48, 50, 59.94 and 60 fps; this video runs at {_rate_text(rate)} fps. "
            "Export otio or fcpxml instead: they keep the video's own rate"
        )
    text = otio.adapters.write_to_string(timeline, "cmx_3600", rate=float(rate))
    # The adapter leaves out the FCM line (its own TODO); editors read drop frame from it.
    drop = rate.denominator == 1001 and rate.numerator % 30000 == 0
    fcm = "FCM: DROP FRAME" if drop else "FCM: NON-DROP FRAME"
    title, newline, rest = text.partition("\n")
    return f"{title}{newline}{fcm}\n{rest}" if title.startswith("TITLE:") else f"{fcm}\n{text}"


def _exact_fcpxml_format(text: str, rate: Fraction, video: VideoInfo) -> str:
    """Give the writer's `format` its exact frame duration (its table misses NTSC rates).

    Also the picture size, and whether the asset (the uploaded file) has sound, which
    the writer cannot know.
    """
    root = ElementTree.fromstring(text)
    for element in root.iter("format"):
        element.set("frameDuration", fcpxml_time(1 / rate))
        element.set("width", str(video.width))
        element.set("height", str(video.height))
    for element in root.iter("asset"):
        element.set("hasAudio", "1" if video.has_audio else "0")
    ElementTree.indent(root, space="    ")
    return _FCPXML_HEADER + ElementTree.tostring(root, encoding="unicode") + "\n"


def fcpxml_time(seconds: Fraction) -> str:
    """FCPXML's rational time: "1001/30000s", "3s", "0s"."""
    if seconds.denominator == 1:
        return f"{seconds.numerator}s"
    return f"{seconds.numerator}/{seconds.denominator}s"


def download_name(filename: str, export: ExportFormat) -> str:
    """The file name offered to save the export under: "match-highlights.edl"."""
    stem = PurePosixPath(filename).stem or "video"
    return f"{stem}-highlights.{export.extension}"


def _rate_text(rate: Fraction) -> str:
    return f"{float(rate):.3f}".rstrip("0").rstrip(".")
