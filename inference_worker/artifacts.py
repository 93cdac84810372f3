"""Files a job leaves for clients: JPEG thumbnails and an MP4 highlight reel.

Each artifact is written under a temporary name in the output directory and renamed into
place only once complete, so a worker killed mid-write never leaves a file that looks done.
Names returned are relative to the output directory; the server turns them into URLs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer

from inference_worker.channel import removed_if_killed
from inference_worker.video import (
    CORRUPT,
    UnusableVideo,
    VideoReader,
    probe,
    scaled_size,
    stream_origin,
    time_base,
    video_stream,
)
from protocol import VideoInfo

THUMBNAILS_DIR = "thumbnails"
THUMBNAIL_QUALITY = 85
# The reel is for watching in a browser, not for archiving: 720p-class frames at most,
# at most 30 frames a second, a keyframe every 2 s so a <video> element seeks quickly.
REEL_MAX_EDGE = 1280
REEL_MAX_FPS = 30
REEL_KEYFRAME_SECONDS = 2
# Encoders browsers play in MP4, best first, with settings tuned for speed at good quality.
# Named as literals so that PyAV knows the stream added for one is a video stream.
ReelEncoder = Literal["libx264", "h264_videotoolbox", "libopenh264", "libsvtav1"]
REEL_VIDEO_ENCODERS: dict[ReelEncoder, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "crf": "23"},
    "h264_videotoolbox": {"b": "4M"},
    "libopenh264": {"b": "4M"},
    "libsvtav1": {"preset": "10", "crf": "35"},
}
AAC_FRAME_SAMPLES = 1024  # the AAC encoder takes exactly this many samples per frame
# Rates the AAC encoder takes; others (and anything above 48 kHz) become 48 kHz, plenty here.
_AAC_SAMPLE_RATES = {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}
_REEL_SAMPLE_RATE = 48000
# AAC frames overlap, so the first one decoded after a seek is incomplete: start a bit early.
_AUDIO_PREROLL_SECONDS = 0.1
_AUDIO_FORMAT = "fltp"


def write_thumbnails(
    video_path: Path | str, times: Sequence[float], output_dir: Path | str, max_edge: int = 480
) -> list[str]:
    """One JPEG per time, the frame shown then, upright; names relative to `output_dir`.

    The i-th time becomes f"thumbnails/{i:03d}.jpg"; times need not be in order.
    """
    if not times:
        return []
    output_dir = Path(output_dir)
    order = sorted(range(len(times)), key=lambda i: times[i])
    with VideoReader(video_path, max_edge) as reader:
        frames = reader.frames_at([times[i] for i in order])
    (output_dir / THUMBNAILS_DIR).mkdir(parents=True, exist_ok=True)
    names = [""] * len(times)
    for i, frame in zip(order, frames, strict=True):
        name = f"{THUMBNAILS_DIR}/{i:03d}.jpg"
        with _written_atomically(output_dir / name) as temporary:
            frame.image.save(temporary, format="JPEG", quality=THUMBNAIL_QUALITY)
        names[i] = name
    return names


def write_reel(
    video_path: Path | str,
    ranges: Sequence[tuple[float, float]],
    output_dir: Path | str,
    name: str = "reel.mp4",
    max_edge: int = REEL_MAX_EDGE,
    info: VideoInfo | None = None,
) -> float:
    """Join the (start, end) second ranges of the video, in order, into one MP4; its duration.

    H.264 yuv420p (or another codec browsers play, if this PyAV lacks libx264) with AAC
    audio when the source has sound, timestamps continuous across ranges, the index at the
    front (+faststart) so a browser starts playing and seeking before the whole file is in.
    The source's rotation is carried as a display matrix. Ranges are clipped to the video;
    ValueError if nothing is left. `info` is the video's probe when the caller has it.
    """
    info = info or probe(video_path)
    # A whole-number rate: 29.97 fps becomes 30, which repeats one frame in 33 s.
    fps = Fraction(min(max(1, round(info.fps)), REEL_MAX_FPS) if info.fps else REEL_MAX_FPS)
    spans = _frame_spans(ranges, info.duration_seconds, fps)
    if not spans:
        raise ValueError(f"no part of {list(ranges)} lies within the video")
    # The probe reports the displayed size; frames are encoded as stored, turned on display.
    width, height = (
        (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
    )
    width, height = (max(2, edge - edge % 2) for edge in scaled_size(width, height, max_edge))

    output = Path(output_dir) / name
    with _written_atomically(output) as temporary:
        with av.open(
            str(temporary), "w", format="mp4", container_options={"movflags": "+faststart"}
        ) as out:
            video = _add_video_stream(out, fps, width, height, info.rotation)
            audio = _add_audio_stream(out, video_path) if info.has_audio else None
            frames_written = _encode_reel(out, video, audio, video_path, spans, fps, width, height)
    return float(frames_written / fps)


def pick_video_encoder(available: Collection[str]) -> ReelEncoder:
    """The first of REEL_VIDEO_ENCODERS that `available` (codec names) offers as an encoder."""
    for name in REEL_VIDEO_ENCODERS:
        if name in available:
            try:
                av.Codec(name, "w")
            except av.error.FFmpegError:
                continue  # a decoder of that name, not an encoder
            return name
    raise RuntimeError("this PyAV build has no video encoder that browsers play in MP4")


@contextmanager
def _written_atomically(final: Path) -> Iterator[Path]:
    """A temporary path beside `final`, renamed to `final` only if the block completes."""
    temporary = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
    try:
        # Removed by the SIGTERM watchdog too, if it must end the process mid-write.
        with removed_if_killed(temporary):
            yield temporary
            os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _frame_spans(
    ranges: Sequence[tuple[float, float]], duration: float, fps: Fraction
) -> list[tuple[float, int]]:
    """(start, frame count) per range, clipped to the video, dropping those under a frame."""
    spans = []
    for start, end in ranges:
        start, end = max(0.0, start), min(end, duration)
        count = round((end - start) * fps)
        if count > 0:
            spans.append((start, count))
    return spans


def _add_video_stream(
    out: OutputContainer, fps: Fraction, width: int, height: int, rotation: int
) -> av.VideoStream:
    encoder = pick_video_encoder(av.codecs_available)
    stream = out.add_stream(encoder, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.gop_size = max(1, round(fps * REEL_KEYFRAME_SECONDS))
    stream.options = dict(REEL_VIDEO_ENCODERS[encoder])
    if rotation:
        stream.set_display_rotation(-rotation)  # counter-clockwise, as the matrix has it
    return stream


def _add_audio_stream(out: OutputContainer, video_path: Path | str) -> AudioStream:
    with av.open(str(video_path)) as source:
        sound = _audio_stream(source)
        layout = sound.layout.name if sound.channels <= 2 else "stereo"
        rate = sound.sample_rate if sound.sample_rate in _AAC_SAMPLE_RATES else _REEL_SAMPLE_RATE
    return out.add_stream("aac", rate=rate, layout=layout)


def _audio_stream(source: InputContainer) -> AudioStream:
    """The audio stream `probe` counted: the first one there is a decoder for."""
    return next(s for s in source.streams.audio if s.codec_context is not None)


def _encode_reel(
    out: OutputContainer,
    video: av.VideoStream,
    audio: AudioStream | None,
    video_path: Path | str,
    spans: list[tuple[float, int]],
    fps: Fraction,
    width: int,
    height: int,
) -> int:
    """Encode the spans' frames, with audio interleaved in time order; the frame count."""
    audio_frames = _reel_audio_frames(video_path, spans, fps, audio) if audio else iter(())
    pending_audio = next(audio_frames, None)  # (its time in the reel, the frame)
    written = 0
    with VideoReader(video_path, max_edge=max(width, height)) as reader:
        for start, count in spans:
            times = [start + k / fps for k in range(count)]
            for decoded in reader.decoded_at(times):
                frame = decoded.frame.reformat(width=width, height=height, format="yuv420p")
                frame.pts, frame.time_base = written, 1 / fps
                # x264 obeys a frame's picture type; the source's I/P/B pattern is not ours.
                frame.pict_type = av.video.frame.PictureType.NONE
                out.mux(video.encode(frame))
                written += 1
                # Audio up to the end of this frame keeps the file interleaved for streaming.
                while pending_audio is not None and pending_audio[0] < written / fps:
                    assert audio is not None  # audio frames come only with an audio stream
                    out.mux(audio.encode(pending_audio[1]))
                    pending_audio = next(audio_frames, None)
    out.mux(video.encode(None))
    if audio is not None:
        while pending_audio is not None:
            out.mux(audio.encode(pending_audio[1]))
            pending_audio = next(audio_frames, None)
        out.mux(audio.encode(None))
    return written


def _reel_audio_frames(
    video_path: Path | str, spans: list[tuple[float, int]], fps: Fraction, audio: AudioStream
) -> Iterator[tuple[float, av.AudioFrame]]:
    """The spans' sound as AAC-sized frames, each span cut to its video's length, so the
    picture and the sound of every span start together; each with its time in the reel."""
    rate, layout = audio.sample_rate, audio.layout.name
    channels = audio.channels
    buffered: list[np.ndarray] = []
    buffered_samples = 0
    emitted = 0
    with av.open(str(video_path)) as source:
        origin = stream_origin(video_stream(source))
        samples_before = 0
        frames_before = 0
        for start, count in spans:
            frames_before += count
            wanted = round(frames_before / fps * rate) - samples_before
            samples_before += wanted
            for chunk in _span_samples(source, start, wanted, rate, layout, origin, channels):
                buffered.append(chunk)
                buffered_samples += chunk.shape[1]
                while buffered_samples >= AAC_FRAME_SAMPLES:
                    joined = np.concatenate(buffered, axis=1)
                    frame = _audio_frame(joined[:, :AAC_FRAME_SAMPLES], emitted, rate, layout)
                    yield emitted / rate, frame
                    emitted += AAC_FRAME_SAMPLES
                    buffered = [joined[:, AAC_FRAME_SAMPLES:]]
                    buffered_samples -= AAC_FRAME_SAMPLES
    if buffered_samples:
        tail = np.concatenate(buffered, axis=1)
        padded = np.zeros((channels, AAC_FRAME_SAMPLES), np.float32)
        padded[:, : tail.shape[1]] = tail
        yield emitted / rate, _audio_frame(padded, emitted, rate, layout)


def _span_samples(
    source: InputContainer,
    start: float,
    wanted: int,
    rate: int,
    layout: str,
    origin: float,
    channels: int,
) -> Iterator[np.ndarray]:
    """Exactly `wanted` samples from `start` s on, planar float32, padded with silence."""
    stream = _audio_stream(source)
    try:
        offset = round((start - _AUDIO_PREROLL_SECONDS + origin) / time_base(stream))
        source.seek(offset, stream=stream, backward=True)
        resampler = av.AudioResampler(format=_AUDIO_FORMAT, layout=layout, rate=rate)
        cursor: float | None = None  # the time of the next resampled sample
        given = 0
        for packet in source.demux(stream):
            for decoded in packet.decode():
                if cursor is None:
                    if decoded.time is None:
                        continue
                    cursor = decoded.time - origin
                for frame in resampler.resample(decoded):
                    samples = frame.to_ndarray()
                    skip = min(samples.shape[1], max(0, round((start - cursor) * rate)))
                    cursor += samples.shape[1] / rate
                    samples = samples[:, skip : skip + wanted - given]
                    if samples.shape[1]:
                        yield samples
                        given += samples.shape[1]
                    if given >= wanted:
                        return
    except av.FFmpegError as error:
        raise UnusableVideo(CORRUPT) from error
    if given < wanted:
        yield np.zeros((channels, wanted - given), np.float32)


def _audio_frame(samples: np.ndarray, pts: int, rate: int, layout: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, np.float32), format=_AUDIO_FORMAT, layout=layout
    )
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    return frame
