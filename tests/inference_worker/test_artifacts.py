"""Artifacts: thumbnails and the highlight reel are right, play in a browser, and are atomic."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from inference_worker import artifacts
from inference_worker.artifacts import pick_video_encoder, write_reel, write_thumbnails
from inference_worker.video import VideoReader, probe
from tests import media
from tests.inference_worker.mp4_boxes import top_level_boxes

FPS = 10  # write_video's default


def reel_frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as reel:
        return list(reel.decode(video=0))


def upright_index(frame: av.VideoFrame) -> int:
    # PIL turns counter-clockwise, as the display matrix angle is measured.
    return media.read_frame_index(frame.to_image().rotate(frame.rotation, expand=True))


def leftovers(directory: Path) -> list[str]:
    """Files that are not finished artifacts: temporary names start with a dot."""
    return sorted(p.name for p in directory.rglob("*") if p.name.startswith("."))


# thumbnails


def test_thumbnails_are_jpegs_of_the_frames_at_the_times_in_the_order_given(sample_video, tmp_path):
    times = [7.5, 0.0, 11.2]
    names = write_thumbnails(sample_video, times, tmp_path)
    assert names == ["thumbnails/000.jpg", "thumbnails/001.jpg", "thumbnails/002.jpg"]
    for name, time in zip(names, times, strict=True):
        with Image.open(tmp_path / name) as image:
            assert image.format == "JPEG"
            assert media.read_frame_index(image) == math.floor(time * FPS)
    assert leftovers(tmp_path) == []


def test_thumbnails_respect_max_edge_and_are_upright(make_video, tmp_path):
    clip = make_video(seconds=2.0, rotation=90, width=320, height=240)
    (name,) = write_thumbnails(clip, [1.0], tmp_path, max_edge=100)
    with Image.open(tmp_path / name) as image:
        assert image.size == (75, 100)  # portrait, as displayed
        assert media.read_frame_index(image) == 10


def test_no_times_make_no_thumbnails(sample_video, tmp_path):
    assert write_thumbnails(sample_video, [], tmp_path) == []


def test_a_thumbnail_that_fails_mid_write_leaves_no_file(sample_video, tmp_path, monkeypatch):
    def half_written(image, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\xff\xd8 half a JPEG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_thumbnails(sample_video, [1.0], tmp_path)
    assert list((tmp_path / "thumbnails").iterdir()) == []


# the reel


def test_the_reel_joins_the_ranges_in_order_with_their_frames(sample_video, tmp_path):
    ranges = [(1.0, 3.0), (6.0, 7.5), (10.0, 11.0)]
    duration = write_reel(sample_video, ranges, tmp_path)
    assert duration == pytest.approx(4.5, abs=2 / FPS)
    frames = reel_frames(tmp_path / "reel.mp4")
    expected = [*range(10, 30), *range(60, 75), *range(100, 110)]
    assert [upright_index(frame) for frame in frames] == expected
    assert leftovers(tmp_path) == []


def test_reel_timestamps_are_continuous_across_ranges(sample_video, tmp_path):
    write_reel(sample_video, [(0.0, 1.0), (5.0, 6.0), (9.0, 10.0)], tmp_path)
    times = [frame.time for frame in reel_frames(tmp_path / "reel.mp4")]
    steps = np.diff(times)
    assert times[0] == pytest.approx(0.0)
    assert steps == pytest.approx(np.full(len(steps), 1 / FPS))


def test_the_reel_plays_in_a_browser(sample_video, tmp_path):
    """H.264 yuv420p with AAC, and the moov index before the media data (+faststart)."""
    write_reel(sample_video, [(2.0, 4.0)], tmp_path)
    reel = tmp_path / "reel.mp4"
    boxes = top_level_boxes(reel)
    assert boxes.index("moov") < boxes.index("mdat")
    with av.open(str(reel)) as container:
        (video,) = container.streams.video
        (audio,) = container.streams.audio
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert audio.codec_context.name == "aac"


def test_the_reel_has_sound_only_when_the_source_has(make_video, tmp_path):
    write_reel(make_video("silent.mp4", seconds=3.0), [(0.0, 2.0)], tmp_path, name="silent.mp4")
    assert probe(tmp_path / "silent.mp4").has_audio is False
    loud = make_video("loud.mp4", seconds=3.0, audio=True)
    write_reel(loud, [(0.0, 2.0)], tmp_path, name="loud.mp4")
    assert probe(tmp_path / "loud.mp4").has_audio is True


def test_the_reel_sound_is_the_source_sound_for_as_long_as_the_picture(sample_video, tmp_path):
    """The test tone is there (not silence), and no range's sound runs into the next one."""
    duration = write_reel(sample_video, [(1.0, 2.5), (8.0, 9.0)], tmp_path)
    with av.open(str(tmp_path / "reel.mp4")) as container:
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        rate = container.streams.audio[0].sample_rate
    assert len(samples) / rate == pytest.approx(duration, abs=0.05)
    middle = samples[int(0.2 * rate) : int((duration - 0.2) * rate)]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.1)


def test_a_rotated_source_gives_a_reel_displayed_upright(make_video, tmp_path):
    clip = make_video(seconds=3.0, rotation=270, audio=True)
    write_reel(clip, [(0.5, 2.0)], tmp_path)
    info = probe(tmp_path / "reel.mp4")
    assert (info.rotation, info.width, info.height) == (270, 120, 160)
    with VideoReader(tmp_path / "reel.mp4", 160) as reader:
        (frame,) = reader.frames_at([0.0])
    assert media.read_frame_index(frame.image) == 5


def test_reel_frames_are_scaled_to_an_even_size_for_yuv420p(make_video, tmp_path):
    clip = make_video(seconds=2.0, width=320, height=240)
    write_reel(clip, [(0.0, 1.0)], tmp_path, max_edge=150)  # 150 x 112.5
    frame = reel_frames(tmp_path / "reel.mp4")[0]
    assert (frame.width, frame.height) == (150, 112)


def test_ranges_are_clipped_to_the_video(sample_video, tmp_path):
    duration = write_reel(sample_video, [(-2.0, 1.0), (11.0, 30.0)], tmp_path)
    assert duration == pytest.approx(2.0, abs=2 / FPS)


def test_ranges_outside_the_video_are_an_error_and_leave_no_file(sample_video, tmp_path):
    with pytest.raises(ValueError, match="no part"):
        write_reel(sample_video, [(20.0, 25.0)], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_reel_that_fails_mid_write_leaves_no_file(sample_video, tmp_path, monkeypatch):
    """As when the worker is told to stop while encoding: no reel, and no temporary file."""

    class Interrupted(BaseException):
        pass

    class FailingReader(VideoReader):
        def decoded_at(self, times):
            for count, decoded in enumerate(super().decoded_at(times)):
                if count == 5:
                    raise Interrupted
                yield decoded

    monkeypatch.setattr(artifacts, "VideoReader", FailingReader)
    with pytest.raises(Interrupted):
        write_reel(sample_video, [(1.0, 4.0)], tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_reel_is_replaced_whole(sample_video, tmp_path):
    write_reel(sample_video, [(0.0, 4.0)], tmp_path)
    assert write_reel(sample_video, [(0.0, 1.0)], tmp_path) == pytest.approx(1.0)
    assert len(reel_frames(tmp_path / "reel.mp4")) == FPS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reel.mp4"]


# the encoder choice


def test_libx264_is_preferred_then_other_codecs_browsers_play():
    assert pick_video_encoder({"libx264", "libsvtav1", "h264"}) == "libx264"
    assert pick_video_encoder({"libsvtav1", "mpeg4"}) == "libsvtav1"


def test_without_a_browser_codec_the_reel_cannot_be_made():
    with pytest.raises(RuntimeError, match="no video encoder"):
        pick_video_encoder({"mpeg4", "h264"})  # "h264" is only FFmpeg's decoder


@pytest.mark.skipif("libsvtav1" not in av.codecs_available, reason="no AV1 encoder here")
def test_the_av1_fallback_makes_a_playable_reel(sample_video, tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "pick_video_encoder", lambda available: "libsvtav1")
    write_reel(sample_video, [(1.0, 2.0)], tmp_path)
    frames = reel_frames(tmp_path / "reel.mp4")
    assert [upright_index(frame) for frame in frames] == list(range(10, 20))
