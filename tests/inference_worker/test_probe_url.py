"""probe() of an http(s) URL, as an object in a bucket is checked through a presigned URL.

The files are served by a real HTTP server on 127.0.0.1 that answers Range requests. A good
or bad file gets the answer its copy on disk gets; a URL that cannot be read (404, a refused
connection, a signature that expires mid-probe) is VideoSourceUnreachable, never blamed on
the file, and comes back within a bound.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inference_worker.video import (
    CORRUPT,
    EMPTY,
    NOT_A_VIDEO,
    UnusableVideo,
    VideoSourceUnreachable,
    probe,
)
from protocol import VideoInfo
from tests import media
from tests.inference_worker.http_files import (
    SIGNATURE_QUERY,
    FileServer,
    refused_url,
    serve_files,
)
from tests.inference_worker.mp4_boxes import top_level_boxes

# Far above the few seconds FFmpeg's retries may take: past it, probing a URL hangs.
PROBE_BOUND_SECONDS = 60


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A directory of good and bad uploads, named for what they are; read only."""
    tmp_path = tmp_path_factory.mktemp("videos")
    directory = tmp_path / "bucket"
    directory.mkdir()
    good = media.write_video(directory / "match clip.mp4", seconds=4.0, audio=True)
    media.write_truncated(directory / "truncated.mp4", good)
    media.write_text_file(directory / "notes.mp4")
    # Big enough that FFmpeg cannot take it in with its first read: camera-like grain.
    grainy = media.write_video(tmp_path / "grainy.mp4", width=320, height=240, grain=40)
    # Remuxed without +faststart, FFmpeg's default for MP4: the index (moov) at the end.
    media.remux(grainy, directory / "index-at-end.mp4", "mp4")
    return directory


@pytest.fixture
async def bucket(aiohttp_server, videos) -> FileServer:
    return await serve_files(aiohttp_server, videos)


async def probe_url(url: str, size: int | None, filename: str = "") -> VideoInfo:
    """probe() in a thread, so the server on this loop answers; bounded, so a hang fails."""
    return await asyncio.wait_for(
        asyncio.to_thread(probe, url, filename, size), PROBE_BOUND_SECONDS
    )


async def test_a_video_at_a_url_has_the_facts_of_the_file_and_the_name_of_its_last_path_part(
    bucket, videos
):
    """The default filename is the URL path's last component, percent-decoded, sans query."""
    good = videos / "match clip.mp4"
    info = await probe_url(bucket.url(good.name), good.stat().st_size)
    assert info == probe(good)
    assert info.filename == "match clip.mp4"
    assert (await probe_url(bucket.url(good.name), good.stat().st_size, "mine.mp4")).filename == (
        "mine.mp4"
    )


async def test_an_mp4_with_its_index_at_the_end_is_read_with_range_requests(bucket, videos):
    tail = videos / "index-at-end.mp4"
    boxes = top_level_boxes(tail)
    assert boxes.index("moov") > boxes.index("mdat"), "the fixture has its index at the end"
    info = await probe_url(bucket.url(tail.name), tail.stat().st_size)
    assert info == probe(tail)
    ranges = [header for _, header in bucket.requests]
    assert all(header is not None for header in ranges)
    starts = [int(header.removeprefix("bytes=").partition("-")[0]) for header in ranges if header]
    assert max(starts) > 0, "FFmpeg jumped to the index instead of reading through"


async def test_a_truncated_upload_at_a_url_is_refused_as_on_disk(bucket, videos):
    truncated = videos / "truncated.mp4"
    with pytest.raises(UnusableVideo, match=f"^{CORRUPT}$"):
        await probe_url(bucket.url(truncated.name), truncated.stat().st_size)


async def test_a_file_that_is_not_a_video_at_a_url_is_refused_as_on_disk(bucket, videos):
    notes = videos / "notes.mp4"
    with pytest.raises(UnusableVideo, match=f"^{NOT_A_VIDEO}$"):
        await probe_url(bucket.url(notes.name), notes.stat().st_size)


async def test_an_empty_object_is_refused_as_empty(bucket, videos):
    with pytest.raises(UnusableVideo, match=f"^{EMPTY}$"):
        await probe_url(bucket.url("notes.mp4"), 0)


async def test_a_url_that_answers_404_is_unreachable_and_its_signature_is_not_shown(bucket):
    with pytest.raises(VideoSourceUnreachable, match="404") as raised:
        await probe_url(bucket.url("missing.mp4"), 1000)
    assert "/missing.mp4" in str(raised.value)
    assert "Signature" not in str(raised.value)


async def test_a_url_whose_port_refuses_connections_is_unreachable():
    with pytest.raises(VideoSourceUnreachable, match="refused"):
        await probe_url(refused_url(), 1000)


async def test_a_url_that_has_expired_is_unreachable_not_a_bad_file(bucket, videos):
    bucket.expires_after = 0
    with pytest.raises(VideoSourceUnreachable, match="403"):
        await probe_url(bucket.url("match clip.mp4"), (videos / "match clip.mp4").stat().st_size)


async def test_a_url_that_expires_in_the_middle_of_a_probe_is_unreachable_not_a_bad_file(
    bucket, videos
):
    """FFmpeg's demuxer calls the failed later read bad data; the URL is asked once more."""
    tail = videos / "index-at-end.mp4"
    bucket.expires_after = 1
    with pytest.raises(VideoSourceUnreachable, match="403"):
        await probe_url(bucket.url(tail.name), tail.stat().st_size)
    assert len(bucket.requests) > 2, "the first read was answered, later ones refused"


async def test_a_url_without_a_size_is_the_callers_mistake(bucket):
    with pytest.raises(ValueError, match="size") as raised:
        await probe_url(bucket.url("match clip.mp4"), None)
    assert SIGNATURE_QUERY not in str(raised.value)
    assert bucket.requests == [], "nothing is read without a size"
