"""Video input: what probe reports, every bad file it refuses, and which frames the reader returns.

Frames of `tests.media.write_video` carry their own index, so each check below compares the
frame a time asked for with the frame that came back.
"""

from __future__ import annotations

import math
import threading

import av
import pytest

from inference_worker import video
from inference_worker.video import UnusableVideo, VideoReader, probe, sample_frames
from tests import media

FPS = 10  # write_video's default


def expected_index(time: float, frame_count: int, fps: int = FPS) -> int:
    """The frame shown at `time`: the last one starting at or before it, within the clip."""
    return min(frame_count - 1, max(0, math.floor(time * fps + 1e-9)))


def indices(frames) -> list[int]:
    return [media.read_frame_index(frame.image) for frame in frames]


# probe: the facts


def test_probe_reports_duration_fps_size_and_audio(sample_video):
    info = probe(sample_video, "match.mp4")
    assert info.filename == "match.mp4"
    assert info.duration_seconds == pytest.approx(12.0, abs=0.05)
    assert info.fps == pytest.approx(10.0)
    assert (info.width, info.height) == (160, 120)
    assert info.rotation == 0
    assert info.has_audio is True


def test_probe_defaults_the_filename_to_the_files_own_name(make_video):
    assert probe(make_video("holiday.mp4")).filename == "holiday.mp4"


def test_a_video_without_a_sound_track_has_no_audio(make_video):
    info = probe(make_video(seconds=2.0, fps=25, width=320, height=240))
    assert info.has_audio is False
    assert (info.width, info.height, info.fps) == (320, 240, 25.0)
    assert info.duration_seconds == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_reports_rotation_and_the_displayed_size(make_video, rotation):
    """A quarter turn swaps width and height: the size is the one the viewer sees."""
    info = probe(make_video(seconds=1.0, rotation=rotation))
    assert info.rotation == rotation
    assert (info.width, info.height) == ((120, 160) if rotation in (90, 270) else (160, 120))


@pytest.mark.parametrize("container_format", ["matroska", "mpegts", "h264"])
def test_probe_reads_other_containers(sample_video, tmp_path, container_format):
    """Matroska and MPEG-TS declare a duration; a raw H.264 stream's is added up from frames."""
    copy = media.remux(sample_video, tmp_path / f"copy.{container_format}", container_format)
    info = probe(copy)
    assert info.duration_seconds == pytest.approx(12.0, abs=0.35)
    assert (info.width, info.height, info.fps) == (160, 120, 10.0)
    assert info.has_audio is (container_format != "h264")


# probe: every bad file is an UnusableVideo that says what is wrong


BAD_FILES = {
    "zero bytes": (lambda tmp, src: media.write_zero_bytes(tmp / "empty.mp4"), video.EMPTY),
    "text renamed .mp4": (
        lambda tmp, src: media.write_text_file(tmp / "list.mp4"),
        video.NOT_A_VIDEO,
    ),
    "random bytes": (
        lambda tmp, src: media.write_random_bytes(tmp / "noise.mp4"),
        video.NOT_A_VIDEO,
    ),
    "audio only, .m4a": (lambda tmp, src: media.write_audio_only(tmp / "song.m4a"), video.NO_VIDEO),
    "audio only, .mp4": (lambda tmp, src: media.write_audio_only(tmp / "song.mp4"), video.NO_VIDEO),
    "png": (lambda tmp, src: media.write_still_image(tmp / "photo.png"), video.STILL_IMAGE),
    "jpeg": (lambda tmp, src: media.write_still_image(tmp / "photo.jpg"), video.STILL_IMAGE),
    "truncated, header cut": (
        lambda tmp, src: media.write_truncated(tmp / "cut.mp4", src, keep=0.02),
        video.CORRUPT,
    ),
    "truncated, header intact": (
        lambda tmp, src: media.write_truncated(tmp / "cut.mp4", src, keep=0.5),
        video.CORRUPT,
    ),
    "truncated, only the last frames missing": (
        lambda tmp, src: media.write_truncated(tmp / "cut.mp4", src, keep=0.97),
        video.CORRUPT,
    ),
    "truncated matroska, header intact": (
        lambda tmp, src: media.write_truncated(
            tmp / "cut.mkv", media.remux(src, tmp / "whole.mkv", "matroska"), keep=0.5
        ),
        video.CORRUPT,
    ),
}


@pytest.mark.parametrize("make_bad, message", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_every_bad_file_is_an_invalid_video_saying_why(sample_video, tmp_path, make_bad, message):
    """The message is the plain-words reason, with no server path and no FFmpeg jargon."""
    bad = make_bad(tmp_path, sample_video)
    with pytest.raises(UnusableVideo) as info:
        probe(bad, "upload.mp4")
    assert str(info.value) == message
    assert str(tmp_path) not in str(info.value)


def test_a_bad_file_is_refused_by_the_reader_too(tmp_path):
    with pytest.raises(UnusableVideo, match="not a video file"):
        VideoReader(media.write_text_file(tmp_path / "list.mp4"), 64)


def test_a_missing_file_is_the_callers_error_not_an_invalid_video(tmp_path):
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "nowhere.mp4")


# the reader: which frames


def test_frames_come_from_the_requested_times(sample_video):
    times = [0.0, 0.5, 1.0, 3.3, 7.25, 11.9]
    frames = sample_frames(sample_video, times, max_edge=96)
    assert indices(frames) == [expected_index(t, 120) for t in times]
    assert [frame.time for frame in frames] == pytest.approx([0.0, 0.5, 1.0, 3.3, 7.2, 11.9])


def test_a_time_between_frames_gives_the_frame_shown_then(sample_video):
    """Frame 10 is on screen from 1.0 s until frame 11 replaces it at 1.1 s."""
    frames = sample_frames(sample_video, [0.999, 1.0, 1.05, 1.0999, 1.1], max_edge=64)
    assert indices(frames) == [9, 10, 10, 10, 11]


def test_times_outside_the_video_clamp_to_its_first_and_last_frames(sample_video):
    frames = sample_frames(sample_video, [-3.0, 11.95, 12.0, 60.0, 1e6], max_edge=64)
    assert indices(frames) == [0, 119, 119, 119, 119]


def test_repeated_and_crowded_times_each_get_a_frame(sample_video):
    times = [2.0, 2.0, 2.01, 2.02, 2.5, 2.5]
    assert indices(sample_frames(sample_video, times, max_edge=64)) == [20, 20, 20, 20, 25, 25]


@pytest.mark.parametrize(
    "max_edge, size", [(64, (64, 48)), (100, (100, 75)), (160, (160, 120)), (1000, (160, 120))]
)
def test_images_fit_max_edge_keeping_the_aspect_ratio_and_are_never_enlarged(
    sample_video, max_edge, size
):
    (frame,) = sample_frames(sample_video, [4.0], max_edge)
    assert frame.image.mode == "RGB"
    assert frame.image.size == size


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_frames_are_turned_upright_as_they_are_displayed(make_video, rotation):
    """read_frame_index fails unless the orientation marker is top-left, as displayed."""
    clip = make_video(seconds=2.0, rotation=rotation)
    frames = sample_frames(clip, [0.0, 1.5], max_edge=80)
    assert indices(frames) == [0, 15]
    expected = (60, 80) if rotation in (90, 270) else (80, 60)
    assert all(frame.image.size == expected for frame in frames)


def test_dense_and_sparse_sampling_give_the_same_frames(make_video):
    """One dense pass, many sparse seeks, and one reader per time all agree with the truth."""
    clip = make_video(seconds=12.0, gop=7)  # a keyframe every 0.7 s, B-frames between
    dense = [k * 0.05 for k in range(240)]
    sparse = [0.33, 2.2, 2.21, 5.0, 5.69, 5.7, 9.99, 11.4]
    with VideoReader(clip, 48) as reader:
        dense_indices = indices(reader.frames_at(dense))
    with VideoReader(clip, 48) as reader:
        sparse_indices = indices(reader.frames_at(sparse))
    one_by_one = [indices(sample_frames(clip, [t], 48))[0] for t in sparse]
    assert dense_indices == [expected_index(t, 120) for t in dense]
    assert sparse_indices == one_by_one == [expected_index(t, 120) for t in sparse]


@pytest.mark.parametrize("container_format", ["matroska", "mpegts", "h264"])
def test_frames_are_found_in_other_containers(make_video, tmp_path, container_format):
    """MPEG-TS seeks land on any frame and raw H.264 cannot seek: the frames are right anyway."""
    clip = media.remux(make_video(seconds=8.0, gop=15), tmp_path / "copy", container_format)
    times = [0.0, 0.25, 3.0, 6.1, 6.2, 7.95]
    with VideoReader(clip, 48) as reader:
        assert indices(reader.frames_at(times)) == [expected_index(t, 80) for t in times]
        assert indices(reader.frames_at([7.99, 9.0])) == [79, 79]


def test_successive_calls_continue_without_reopening(sample_video, monkeypatch):
    opened = []
    real_open = av.open
    monkeypatch.setattr(video.av, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with VideoReader(sample_video, 48) as reader:
        assert indices(reader.frames_at([0.0, 1.0])) == [0, 10]
        assert indices(reader.frames_at([1.05, 4.0])) == [10, 40]
        assert indices(reader.frames_at([10.0])) == [100]
    assert len(opened) == 1


def count_decoded_frames(monkeypatch) -> list[int]:
    """Patch the reader's decode loop to count the frames it decodes."""
    count = [0]
    real_decode = video._decode

    def counting(container, stream):
        for frame in real_decode(container, stream):
            count[0] += 1
            yield frame

    monkeypatch.setattr(video, "_decode", counting)
    return count


def test_sparse_times_seek_past_the_frames_between_them(make_video, monkeypatch):
    """Three frames from a 20 s clip with a keyframe each second cost a few GOPs, not 200 frames."""
    clip = make_video(seconds=20.0, gop=10)
    decoded = count_decoded_frames(monkeypatch)
    assert indices(sample_frames(clip, [5.5, 12.3, 19.0], 48)) == [55, 123, 190]
    assert decoded[0] <= 3 * 10 + 3 * 3  # up to a GOP each, plus the decoder's reorder delay


def test_dense_times_are_decoded_in_one_forward_pass(make_video, monkeypatch):
    """Times closer together than a keyframe interval never trigger a seek back."""
    clip = make_video(seconds=6.0, gop=10)
    decoded = count_decoded_frames(monkeypatch)
    times = [k * 0.3 for k in range(20)]
    assert indices(sample_frames(clip, times, 48)) == [expected_index(t, 60) for t in times]
    assert decoded[0] <= 60


def test_times_must_be_ascending(sample_video):
    with VideoReader(sample_video, 48) as reader, pytest.raises(ValueError, match="ascending"):
        reader.frames_at([3.0, 1.0])


def test_a_later_call_may_go_back_in_time(sample_video):
    """Each call's times ascend; a new call may start earlier, at the cost of a seek."""
    with VideoReader(sample_video, 48) as reader:
        assert indices(reader.frames_at([9.0])) == [90]
        assert indices(reader.frames_at([0.2, 2.0])) == [2, 20]


def test_a_closed_reader_refuses_work(sample_video):
    reader = VideoReader(sample_video, 48)
    reader.close()
    reader.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        reader.frames_at([1.0])


def test_a_reader_works_from_a_background_thread(sample_video):
    """The worker decodes ahead in a thread while the model runs in the main one."""
    results = []
    with VideoReader(sample_video, 48) as reader:
        thread = threading.Thread(target=lambda: results.append(reader.frames_at([2.0, 8.0])))
        thread.start()
        thread.join()
        assert indices(results[0]) == [20, 80]
        assert indices(reader.frames_at([9.0])) == [90]


def test_a_one_frame_gif_is_a_still_image_but_an_animated_gif_is_a_video(tmp_path):
    """A picture in a video container has no length; frames over time make a video."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "one.gif")
    with pytest.raises(UnusableVideo, match="still image"):
        probe(tmp_path / "one.gif")
    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=200)
    assert probe(tmp_path / "anim.gif").duration_seconds == pytest.approx(1.0)
