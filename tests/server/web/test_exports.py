"""Exports for editors: read back with OpenTimelineIO, each is exactly the highlights' cuts
at the source's own rate (NTSC rates included), and the refusals say why."""

from __future__ import annotations

import math
from fractions import Fraction
from xml.etree import ElementTree

import opentimelineio as otio
import pytest

from protocol import HighlightFound, VideoInfo
from server.web.exports import (
    FORMATS,
    METADATA_KEY,
    ExportRefused,
    NoCuts,
    export_text,
    frame_rate,
)
from tests.fixtures.http_worker import CUTS
from tests.server.http_helpers import V1, finished, start, upload_id

NTSC_29_97 = Fraction(30000, 1001)
RATES = [Fraction(24000, 1001), Fraction(25), NTSC_29_97, Fraction(30), Fraction(60000, 1001)]
HIGHLIGHTS = [HighlightFound(**cut, significance=7, description="a cut") for cut in CUTS]


def nearest_frame(seconds: float, rate: Fraction) -> int:
    """The frame boundary nearest `seconds` (decimal, as the API writes it), later on a tie."""
    exact = Fraction(repr(seconds))
    frame = math.floor(exact * rate + Fraction(1, 2))
    assert -1 / (2 * rate) < frame / rate - exact <= 1 / (2 * rate)
    return frame


def expected_ranges(rate: Fraction) -> list[tuple[int, int]]:
    """(first frame, frame count) of each highlight's cut at `rate`."""
    cuts = []
    for cut in CUTS:
        first = nearest_frame(cut["start"], rate)
        cuts.append((first, nearest_frame(cut["end"], rate) - first))
    return cuts


def ranges_at(timeline: otio.schema.Timeline, rate: Fraction) -> list[tuple[int, int]]:
    """(first frame, frame count) of each clip, asserting it is counted at `rate`."""
    found = []
    for clip in timeline.find_clips():
        start, duration = clip.source_range.start_time, clip.source_range.duration
        assert math.isclose(start.rate, float(rate)) and math.isclose(duration.rate, float(rate))
        assert start.value == int(start.value) and duration.value == int(duration.value)
        found.append((int(start.value), int(duration.value)))
    return found


def video_at(rate: Fraction, filename: str = "match day.mp4") -> VideoInfo:
    # As the probe reports it: a float rounded to 3 decimals.
    return VideoInfo(filename, 4.004, 1920, 1080, round(float(rate), 3), has_audio=True)


def fcpxml_time(text: str) -> Fraction:
    """FCPXML's "1001/30000s" (or "3s") as an exact fraction of seconds."""
    assert text.endswith("s")
    return Fraction(text[:-1])


@pytest.mark.parametrize(
    ("fps", "rate"),
    [
        (23.976, Fraction(24000, 1001)),
        (29.97, NTSC_29_97),
        (59.94, Fraction(60000, 1001)),
        (25.0, Fraction(25)),
        (30.0, Fraction(30)),
        (12.5, Fraction(25, 2)),
    ],
)
def test_the_probes_rounded_fps_is_taken_for_the_exact_rate_it_stands_for(fps, rate):
    assert frame_rate(fps) == rate


def test_a_video_of_unknown_rate_cannot_be_cut():
    with pytest.raises(ExportRefused, match="frame rate is unknown"):
        frame_rate(0.0)


@pytest.mark.parametrize("rate", RATES, ids=str)
def test_otio_json_reads_back_as_the_highlights_at_the_sources_rate(rate):
    text = export_text(FORMATS["otio"], video_at(rate), HIGHLIGHTS, session_id="s")
    timeline = otio.adapters.read_from_string(text, "otio_json")
    assert ranges_at(timeline, rate) == expected_ranges(rate)
    clips = timeline.find_clips()
    assert [clip.name for clip in clips] == ["match day.mp4"] * 3
    assert {clip.media_reference.target_url for clip in clips} == {"match day.mp4"}
    assert [clip.metadata[METADATA_KEY]["start"] for clip in clips] == [c["start"] for c in CUTS]


@pytest.mark.parametrize("rate", RATES, ids=str)
def test_an_edl_reads_back_as_the_highlights_at_the_sources_rate(rate):
    text = export_text(FORMATS["edl"], video_at(rate), HIGHLIGHTS, session_id="s")
    timeline = otio.adapters.read_from_string(text, "cmx_3600", rate=float(rate))
    assert ranges_at(timeline, rate) == expected_ranges(rate)
    assert [clip.name for clip in timeline.find_clips()] == ["match day.mp4"] * 3
    drop_frame = rate in (NTSC_29_97, Fraction(60000, 1001))
    assert text.splitlines()[1] == ("FCM: DROP FRAME" if drop_frame else "FCM: NON-DROP FRAME")


@pytest.mark.parametrize("rate", RATES, ids=str)
def test_fcpxml_times_are_exact_frames_of_the_sources_rate(rate):
    """Checked in the XML itself: the fcpx_xml reader truncates 29.97 to 29 fps."""
    text = export_text(FORMATS["fcpxml"], video_at(rate), HIGHLIGHTS, session_id="s")
    root = ElementTree.fromstring(text)
    (media_format,) = root.iter("format")
    assert fcpxml_time(media_format.get("frameDuration")) == 1 / rate
    clips = list(root.iter("clip"))
    assert [clip.get("name") for clip in clips] == ["match day.mp4"] * 3
    found = [
        (fcpxml_time(clip.get("start")) * rate, fcpxml_time(clip.get("duration")) * rate)
        for clip in clips
    ]
    assert found == [(Fraction(s), Fraction(d)) for s, d in expected_ranges(rate)]
    offsets = [fcpxml_time(clip.get("offset")) * rate for clip in clips]
    assert offsets == [0, found[0][1], found[0][1] + found[1][1]]  # back to back


def test_fcpxml_reads_back_with_opentimelineio_at_a_whole_rate():
    rate = Fraction(25)
    text = export_text(FORMATS["fcpxml"], video_at(rate), HIGHLIGHTS, session_id="s")
    timeline = otio.adapters.read_from_string(text, "fcpx_xml")
    assert ranges_at(timeline, rate) == expected_ranges(rate)


def test_an_edl_of_a_rate_without_smpte_timecode_is_refused_and_says_what_to_use():
    with pytest.raises(ExportRefused, match="SMPTE timecode.*10 fps.*otio or fcpxml"):
        export_text(FORMATS["edl"], video_at(Fraction(10)), HIGHLIGHTS, session_id="s")
    # The other formats keep such a rate.
    text = export_text(FORMATS["otio"], video_at(Fraction(10)), HIGHLIGHTS, session_id="s")
    timeline = otio.adapters.read_from_string(text, "otio_json")
    assert ranges_at(timeline, Fraction(10)) == expected_ranges(Fraction(10))


def test_highlights_shorter_than_a_frame_leave_no_cut_and_none_at_all_is_refused():
    tiny = [
        HighlightFound(
            start=1.0,
            end=1.01,
            start_time="00:01",
            end_time="00:01",
            significance=7,
            description="a blink",
        )
    ]
    with pytest.raises(NoCuts):
        export_text(FORMATS["otio"], video_at(Fraction(25)), tiny, session_id="s")


# ---- over HTTP ------------------------------------------------------------------------------


async def test_a_2997_upload_exports_its_highlights_in_every_format(
    aiohttp_client, tmp_path, make_video
):
    """Through the real probe: the 29.97 fps rate comes from the uploaded file."""
    client = await start(aiohttp_client, tmp_path)
    video = make_video("source.mp4", seconds=4.0, fps=NTSC_29_97)
    session_id = await upload_id(client, video, "cuts of the match.mp4", analysis_type="highlights")
    await finished(client, session_id)
    readers = {"otio": {}, "edl": {"rate": float(NTSC_29_97)}}
    for name, options in readers.items():
        response = await client.get(f"{V1}/results/{session_id}/export/{name}")
        assert response.status == 200, await response.text()
        assert response.content_type == FORMATS[name].content_type
        assert response.headers["Content-Disposition"].startswith(
            f'attachment; filename="cuts of the match-highlights.{name}"'
        )
        timeline = otio.adapters.read_from_string(
            await response.text(), FORMATS[name].adapter, **options
        )
        assert ranges_at(timeline, NTSC_29_97) == expected_ranges(NTSC_29_97)
        assert {clip.name for clip in timeline.find_clips()} == {"cuts of the match.mp4"}
    response = await client.get(f"{V1}/results/{session_id}/export/fcpxml")
    assert response.status == 200 and response.content_type == "application/xml"
    root = ElementTree.fromstring(await response.text())
    assert fcpxml_time(next(root.iter("format")).get("frameDuration")) == 1 / NTSC_29_97


async def test_export_errors_follow_the_results_rules_then_name_what_to_fix(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path)
    unknown = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    assert (await client.get(f"{V1}/results/{unknown}/export/otio")).status == 404
    waiting = await upload_id(client, sample_video)
    response = await client.get(f"{V1}/results/{waiting}/export/otio")
    body = await response.json()
    assert response.status == 400 and body["error"] == "Results not ready"

    # The sample video runs at 10 fps: no SMPTE timecode, so no EDL; the other formats work.
    done = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, done)
    response = await client.get(f"{V1}/results/{done}/export/aaf")
    body = await response.json()
    assert (
        response.status == 400
        and body["message"] == "Export formats are otio, edl, fcpxml; got 'aaf'"
    )
    response = await client.get(f"{V1}/results/{done}/export/edl")
    body = await response.json()
    assert response.status == 409 and "10 fps" in body["message"] and body["sessionId"] == done
    assert (await client.get(f"{V1}/results/{done}/export/otio")).status == 200

    workout = await upload_id(client, sample_video, analysis_type="workout")
    await finished(client, workout)
    response = await client.get(f"{V1}/results/{workout}/export/fcpxml")
    body = await response.json()
    assert response.status == 404 and body["error"] == "No highlights"
