"""Video input with PyAV: probe an upload, and decode the frames shown at chosen times.

`probe` decides whether a file is a usable video and reports its facts; every way a file can
be unusable ends as `UnusableVideo`, whose message is shown to API clients. It reads a local
path or an http(s) URL (an object in a bucket, through a presigned URL); a URL that cannot be
read is `VideoSourceUnreachable`, never the file's fault. `VideoReader`
decodes as little as it can: it decodes forward through dense requests and seeks to the
preceding keyframe across sparse gaps, deciding gap by gap.
"""

from __future__ import annotations

import http.client
import math
import posixpath
import threading
import urllib.error
import urllib.request
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

import av
from av.container import InputContainer
from av.video.stream import VideoStream
from PIL import Image

from protocol import VideoInfo

EMPTY = "the file is empty"
NOT_A_VIDEO = "not a video file, or one too damaged to read"
NO_VIDEO = "not a video file (no video stream)"
STILL_IMAGE = "a still image, not a video"
CORRUPT = "the video is truncated or corrupt"
UNSUPPORTED_CODEC = "the video is in a format this server cannot decode"

# Without a keyframe index, decoding forward beats seeking only over short gaps: phones put a
# keyframe every 1-2 s, so a longer gap very likely has a keyframe to seek to.
SEEK_GAP_WITHOUT_INDEX_SECONDS = 2.0
# A seek discards the frames in flight in the decoder (its threads, B-frame reordering):
# worth it only when it skips clearly more frames than that.
_SEEK_MIN_SKIP_SECONDS = 0.5
# A frame within this of a requested time counts as at or before it: it absorbs the rounding
# of times to the stream's time base.
_TIME_EPSILON = 1e-6
# If a demuxer's seek lands after the target, seek again this much earlier, doubling each time.
_SEEK_BACKOFF_SECONDS = 1.0
# Durations declared in headers are a little loose; a truncated upload misses much more.
_MISSING_TAIL_TOLERANCE_SECONDS = 1.0
# For a stream that states no frame rate at all: the commonest rate, to step untimed frames.
_FALLBACK_FPS = 30.0
# Image formats FFmpeg can open as a one-frame "video" (besides the "*_pipe" ones).
_STILL_IMAGE_FORMATS = {"image2"}
_URL_SCHEMES = ("http", "https")
# FFmpeg's http protocol options for reading a video through a URL with Range requests. PyAV's
# own `timeout` argument is left alone: it has known bugs (PyAV issues #1155, #1243).
_URL_OPTIONS = {
    # A connection dropped mid-read is opened again at the same offset (a Range request).
    # Not `reconnect_streamed`: an object store answers Range requests, and a server that
    # does not could only start again from byte 0, which FFmpeg would take for the offset.
    "reconnect": "1",
    # A connect that fails (refused, reset, TLS, timed out) is tried again, as is a store's
    # 5xx; a 4xx (an expired signature, a missing object) is final, so it is not.
    "reconnect_on_network_error": "1",
    "reconnect_on_http_error": "5xx",
    # Two retries, after 0 and 1 s: a store that stalls every attempt costs 3 x rw_timeout
    # + 1 s = 13 s, well within the server's probe timeout (30 s by default). The delay cap
    # bounds the retries too (0, 1, 3 s) where an older FFmpeg ignores the retry count.
    "reconnect_max_retries": "2",
    "reconnect_delay_max": "3",
    # A connect or read with no progress for this long fails instead of hanging (microseconds).
    "rw_timeout": str(4_000_000),
}
# What FFmpeg raises when a URL fails rather than the bytes it gave: an HTTP error status,
# or an errno (refused, reset, timed out, EIO...); bad bytes are InvalidDataError or EOFError.
_TRANSPORT_ERRORS = (av.error.HTTPError, av.error.HTTPClientError, OSError)
# The one request that asks a URL whether it still answers, after FFmpeg found bad data.
_REACHABLE_TIMEOUT_SECONDS = 4.0

_TO_UPRIGHT = {
    90: Image.Transpose.ROTATE_270,  # PIL's ROTATE_n turn counter-clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


class UnusableVideo(Exception):
    """The file cannot be used as a video; the message says why, in words fit for a client."""


class VideoSourceUnreachable(Exception):
    """The video's URL could not be read: an HTTP error status or a network failure.

    An expired signature or a store that is down is no fault of the file, so this is never
    UnusableVideo. The message names the URL without its query, which holds the signature.
    """


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its presentation time (s from the video start) and the upright image."""

    time: float
    image: Image.Image


@dataclass(frozen=True)
class DecodedFrame:
    """A frame as the decoder gives it: full size, coded orientation, and its time span (s)."""

    time: float
    end: float | None  # None when neither container nor codec says how long the frame lasts
    frame: av.VideoFrame


def probe(source: Path | str, filename: str = "", size: int | None = None) -> VideoInfo:
    """The facts of the video at `source`, or UnusableVideo if it is not a usable video.

    `source` is a local path or an http(s) URL, read with Range requests. Decodes the first
    frame, and rejects a truncated upload whose header survived: its index (MP4's sample
    table) points past the end of the file, or its packets stop well short of the duration it
    declares. `size` is the URL's object size in bytes, which the truncation check needs and
    a URL does not tell without a request: a URL without it is a ValueError; a local file's
    own size is used. `filename` is the client's name for the file (default: the file's own,
    or the last part of the URL's path). A missing path raises FileNotFoundError, a URL that
    cannot be read VideoSourceUnreachable: the caller's or the store's fault, not the client's.
    """
    if is_url(source):
        url = str(source)
        if size is None:
            raise ValueError(f"probing a URL needs the object's size in bytes: {redacted(url)}")
        try:
            return _probe(url, filename or _url_filename(url), size)
        except UnusableVideo:
            # FFmpeg's demuxers report a read that failed after the first bytes (a signature
            # expired mid-probe, a store gone down) as bad data: blame the file only if its
            # URL still answers.
            _check_reachable(url)
            raise
    path = Path(source)
    return _probe(path, filename or path.name, path.stat().st_size)


def is_url(source: Path | str) -> bool:
    """Whether `source` is an http(s) URL rather than a local path."""
    return isinstance(source, str) and urlsplit(source).scheme.lower() in _URL_SCHEMES


def redacted(source: Path | str) -> str:
    """`source` fit for a log line: a URL loses its query and credentials (a signature)."""
    if not is_url(source):
        return str(source)
    parts = urlsplit(str(source))
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def _probe(source: Path | str, filename: str, size: int) -> VideoInfo:
    if size == 0:
        raise UnusableVideo(EMPTY)
    with _open(source) as container:
        stream = video_stream(container)
        try:
            first = next(_decode(container, stream), None)
            if first is None:
                raise UnusableVideo(CORRUPT)
            _check_indexed_data_present(container, size)
            duration = _checked_duration(container, stream)
        except av.FFmpegError as error:
            raise _read_failure(source, error, CORRUPT) from error
        if duration <= 0:
            # One frame and no length: a picture in a video container (a one-frame GIF, say).
            raise UnusableVideo(STILL_IMAGE)
        width, height = _square_pixel_size(first.width, first.height, _pixel_aspect(stream))
        rotation = clockwise_rotation(first)
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            filename=filename,
            duration_seconds=round(duration, 3),
            width=width,
            height=height,
            fps=round(_probed_fps(stream, first, duration), 3),
            rotation=rotation,
            has_audio=any(s.codec_context is not None for s in container.streams.audio),
        )


def _check_reachable(url: str) -> None:
    """VideoSourceUnreachable unless a GET of the URL's first byte succeeds.

    A GET, not a HEAD: a presigned URL is signed for one method.
    """
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=_REACHABLE_TIMEOUT_SECONDS):
            pass
    except urllib.error.HTTPError as error:
        error.close()  # it holds the response, and its socket
        if error.code == 416:
            return  # the store read the object, which has no first byte: an empty file
        raise VideoSourceUnreachable(
            f"could not read {redacted(url)}: HTTP {error.code} {error.reason}"
        ) from error
    except (OSError, http.client.HTTPException) as error:
        # URLError's reason is the socket error, which never names the URL.
        reason = getattr(error, "reason", error)
        raise VideoSourceUnreachable(f"could not read {redacted(url)}: {reason}") from error


def _url_filename(url: str) -> str:
    """The last component of the URL's path, before any query, percent-decoded."""
    return unquote(posixpath.basename(urlsplit(url).path))


class VideoReader:
    """Decodes the frames shown at ascending times from one open video, as upright RGB images.

    `VideoReader(path, max_edge)` opens the file once; successive `frames_at` calls with later
    times continue from where the decoder is. Meant for one thread at a time (a decode-ahead
    thread, say); `close` from another thread waits for the frame being decoded, since PyAV
    must not free a container in use. Use as a context manager, or call `close`.
    """

    def __init__(self, path: Path | str, max_edge: int) -> None:
        if max_edge < 1:
            raise ValueError(f"max_edge must be at least 1, not {max_edge}")
        self.max_edge = max_edge
        self._path = Path(path)
        self._lock = threading.Lock()
        self._closed = False
        self._open()
        self._seekable = True
        self._decoded: Generator[av.VideoFrame, None, None] | None = None
        self._held: DecodedFrame | None = None  # the latest frame at or before the last target
        self._following: DecodedFrame | None = None  # decoded already, after the last target
        self._at_end = False

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the file and the decoder; later calls raise ValueError."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._restart_decoding()
                self._container.close()

    def frames_at(self, times: Sequence[float]) -> list[Frame]:
        """One frame per time: the one shown then, upright, longest edge <= `max_edge`.

        `times` must be ascending; times before 0 give the first frame, times past the end
        the last. `Frame.time` is the frame's own presentation time.
        """
        return [
            Frame(time=decoded.time, image=self._to_image(decoded.frame))
            for decoded in self.decoded_at(times)
        ]

    def decoded_at(self, times: Sequence[float]) -> Generator[DecodedFrame, None, None]:
        """Like `frames_at`, lazily, as the decoder's own frames: full size, not rotated."""
        previous = -math.inf
        for time in times:
            if not math.isfinite(time) or time < previous:
                raise ValueError("times must be finite and in ascending order")
            previous = time
            with self._lock:
                if self._closed:
                    raise ValueError("the video reader is closed")
                try:
                    decoded = self._frame_at(max(0.0, time))
                except av.FFmpegError as error:
                    raise UnusableVideo(CORRUPT) from error
            yield decoded

    def _frame_at(self, time: float) -> DecodedFrame:
        if self._needs_seek(time):
            self._seek(time)
        while not self._covers(time):
            decoded = self._following or self._decode_next()
            self._following = None
            if decoded is None:
                self._at_end = True
                if self._held is None:
                    raise UnusableVideo(CORRUPT)
                break
            if decoded.time > time + _TIME_EPSILON:
                if self._held is None:
                    self._held = decoded  # the time is before the first frame there is
                else:
                    self._following = decoded
                break
            self._held = decoded
        assert self._held is not None
        return self._held

    def _covers(self, time: float) -> bool:
        """Whether the held frame is known to be the one shown at `time`."""
        held = self._held
        if held is None or time + _TIME_EPSILON < held.time:
            return False
        if self._following is not None:
            return time + _TIME_EPSILON < self._following.time
        if self._at_end:
            return True
        return held.end is not None and time + _TIME_EPSILON < held.end

    def _needs_seek(self, time: float) -> bool:
        """Seek back for an earlier time; forward when a keyframe lies between here and `time`.

        Decoding forward to `time` would pass through that keyframe anyway, so starting from
        it saves the frames before it. Without a keyframe index, guess from the size of the gap.
        """
        if self._covers(time):
            return False
        if self._held is not None and time < self._held.time:
            return True
        if not self._seekable:
            return False
        latest = self._following or self._held
        position = latest.time if latest is not None else 0.0
        if self._keyframes is None:
            return time - position > SEEK_GAP_WITHOUT_INDEX_SECONDS
        index = self._keyframes.search_timestamp(self._pts(time - self._index_lead), backward=True)
        if index < 0:
            return False
        keyframe_time = float(self._keyframes[index].timestamp * self._time_base)
        return keyframe_time - self._origin + self._index_lead - position > _SEEK_MIN_SKIP_SECONDS

    def _seek(self, time: float) -> None:
        """Position the decoder at the keyframe at or before `time`.

        Some demuxers (MPEG-TS) land on any frame, so the decoder's first frame is the next
        keyframe, after the target; then seek again earlier. Near the start, and for a format
        that cannot seek at all, reopen the file: the one way back that every format honours.
        """
        backoff = 0.0
        while time - backoff > 0.0:
            try:
                self._container.seek(self._pts(time - backoff), stream=self._stream, backward=True)
            except av.error.PermissionError:
                self._seekable = False  # a raw stream, read from the top from now on
                break
            self._restart_decoding()
            self._following = self._decode_next()
            if self._following is not None and self._following.time <= time + _TIME_EPSILON:
                return
            backoff = max(_SEEK_BACKOFF_SECONDS, 2 * backoff)
        self._restart()

    def _open(self) -> None:
        self._container, self._stream = _open_video(self._path)
        self._origin = stream_origin(self._stream)
        self._time_base = time_base(self._stream)
        # Kept here: images are made outside the lock, where the stream may be closed under us.
        self._pixel_aspect = _pixel_aspect(self._stream)
        self._frame_step = 1.0 / float(self._stream.guessed_rate or _FALLBACK_FPS)
        # Index entries live in the container: they go when it is closed, never to be touched.
        entries = self._stream.index_entries
        self._keyframes = entries if len(entries) else None
        # MP4's index holds decode times, which run ahead of a keyframe's presentation time by
        # the B-frame reorder delay (its seeks allow for that): the first entry shows how much.
        self._index_lead = 0.0
        if self._keyframes is not None:
            first = float(entries[0].timestamp * self._time_base)
            self._index_lead = max(0.0, self._origin - first)

    def _restart(self) -> None:
        self._restart_decoding()
        self._container.close()
        self._open()

    def _restart_decoding(self) -> None:
        # The demuxing generator must finish before its container is closed or seeks again.
        if self._decoded is not None:
            self._decoded.close()
        self._decoded = None
        self._held = self._following = None
        self._at_end = False

    def _decode_next(self) -> DecodedFrame | None:
        if self._decoded is None:
            self._decoded = _decode(self._container, self._stream)
        frame = next(self._decoded, None)
        if frame is None:
            return None
        if frame.time is not None:
            time = frame.time - self._origin
        else:
            latest = self._following or self._held
            time = 0.0 if latest is None else latest.end or latest.time + self._frame_step
        end = (
            time + float(frame.duration * frame.time_base)
            if frame.duration and frame.time_base
            else None
        )
        return DecodedFrame(time, end, frame)

    def _pts(self, time: float) -> int:
        return round((time + self._origin) / self._time_base)

    def _to_image(self, frame: av.VideoFrame) -> Image.Image:
        size = _square_pixel_size(frame.width, frame.height, self._pixel_aspect)
        width, height = scaled_size(*size, self.max_edge)
        # swscale resizes and converts in one pass, several times faster than PIL's resize.
        image = frame.reformat(width=width, height=height, format="rgb24").to_image()
        rotation = clockwise_rotation(frame)
        return image.transpose(_TO_UPRIGHT[rotation]) if rotation else image


def sample_frames(path: Path | str, times: Sequence[float], max_edge: int) -> list[Frame]:
    """The frames shown at ascending `times`, upright, longest edge <= `max_edge`."""
    with VideoReader(path, max_edge) as reader:
        return reader.frames_at(times)


def clockwise_rotation(frame: av.VideoFrame) -> int:
    """Degrees (0, 90, 180, 270) to turn `frame` clockwise for display, from its display matrix."""
    # The matrix's angle is counter-clockwise; only quarter turns occur in practice.
    return (-round(frame.rotation / 90) * 90) % 360


def scaled_size(width: int, height: int, max_edge: int) -> tuple[int, int]:
    """`width` x `height` shrunk, keeping the aspect ratio, so the longer edge is <= max_edge."""
    scale = min(1.0, max_edge / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def video_stream(container: InputContainer) -> VideoStream:
    """The container's first real video stream, or UnusableVideo.

    Cover art in an audio file is a video stream too, flagged as an attached picture.
    """
    name = container.format.name
    if name in _STILL_IMAGE_FORMATS or name.endswith("_pipe"):
        raise UnusableVideo(STILL_IMAGE)
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            if stream.codec_context is None:
                raise UnusableVideo(UNSUPPORTED_CODEC)
            return stream
    raise UnusableVideo(NO_VIDEO)


def _open(source: Path | str) -> InputContainer:
    options = _URL_OPTIONS if is_url(source) else {}
    try:
        return av.open(str(source), metadata_errors="replace", container_options=options)
    except av.error.EOFError as error:
        raise UnusableVideo(CORRUPT) from error
    except av.FFmpegError as error:
        raise _read_failure(source, error, NOT_A_VIDEO) from error


def _read_failure(source: Path | str, error: av.FFmpegError, unusable: str) -> Exception:
    """What a PyAV error while reading `source` means: for a URL whose transport failed,
    VideoSourceUnreachable; else the file is unusable, for the reason `unusable`."""
    if is_url(source) and isinstance(error, _TRANSPORT_ERRORS):
        return VideoSourceUnreachable(f"could not read {redacted(source)}: {error.strerror}")
    return UnusableVideo(unusable)


def _open_video(path: Path | str) -> tuple[InputContainer, VideoStream]:
    container = _open(path)
    try:
        stream = video_stream(container)
    except BaseException:
        container.close()
        raise
    stream.thread_type = "AUTO"  # frame and slice threads
    return container, stream


def _decode(container: InputContainer, stream: VideoStream) -> Generator[av.VideoFrame, None, None]:
    # demux() ends with empty packets that flush the frames the decoder still holds.
    for packet in container.demux(stream):
        yield from packet.decode()


def _check_indexed_data_present(container: InputContainer, size: int) -> None:
    """UnusableVideo if the index (MP4's sample table) points past the end of the file."""
    for stream in container.streams:
        for entry in stream.index_entries:
            if entry.pos >= 0 and entry.pos + entry.size > size:
                raise UnusableVideo(CORRUPT)


def _declared_duration(container: InputContainer, stream: VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _checked_duration(container: InputContainer, stream: VideoStream) -> float:
    """The declared duration, once the packets are seen to reach it; else where they end.

    Only the tail is read: a seek to the last keyframe, then demuxing (no decoding) to the end.
    """
    declared = _declared_duration(container, stream)
    if declared is not None and stream.time_base:
        try:
            offset = round((declared + stream_origin(stream)) / stream.time_base)
            container.seek(offset, stream=stream, backward=True)
        except av.error.PermissionError:
            pass  # a format that cannot seek (a raw stream) is read on from the first frame
    end = _packets_end(container, stream)
    if declared is None:
        return end
    if end < declared - max(_MISSING_TAIL_TOLERANCE_SECONDS, 0.01 * declared):
        raise UnusableVideo(CORRUPT)
    return declared


def _packets_end(container: InputContainer, stream: VideoStream) -> float:
    """Where the packets demuxed from here on end, in seconds of the video's timeline.

    A raw stream has no timestamps: its video packets' durations are added up instead.
    """
    end = 0.0
    untimed = 0.0
    for packet in container.demux():
        if packet.pts is not None and packet.time_base:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
        elif packet.stream is stream and packet.size:
            if packet.duration and packet.time_base:
                untimed += float(packet.duration * packet.time_base)
            else:
                untimed += 1.0 / float(stream.guessed_rate or _FALLBACK_FPS)
    if end == 0.0:
        return untimed
    return max(0.0, end - stream_origin(stream))


def _probed_fps(stream: VideoStream, first: av.VideoFrame, duration: float) -> float:
    # A raw stream's only reliable rate is the codec's frame duration; containers know better.
    if first.pts is None and first.duration and first.time_base:
        return 1.0 / float(first.duration * first.time_base)
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return float(rate)
    return stream.frames / duration if stream.frames and duration else 0.0


def stream_origin(stream: VideoStream) -> float:
    """The presentation time, in seconds, that counts as 0 in a video whose stream this is."""
    if stream.start_time is None or not stream.time_base:
        return 0.0
    return float(stream.start_time * stream.time_base)


def time_base(stream: av.stream.Stream) -> Fraction:
    """The stream's unit of timestamps. FFmpeg's demuxers give every stream one, so a
    stream without it is a damaged file: UnusableVideo."""
    if not stream.time_base:
        raise UnusableVideo(CORRUPT)
    return stream.time_base


def _pixel_aspect(stream: VideoStream) -> Fraction:
    """Width over height of one pixel: 1 but in anamorphic video (some DV, broadcast)."""
    return stream.codec_context.sample_aspect_ratio or Fraction(1)


def _square_pixel_size(width: int, height: int, pixel_aspect: Fraction) -> tuple[int, int]:
    """The coded size with non-square pixels stretched to square ones (before rotation)."""
    if pixel_aspect != 1:
        return max(1, round(width * pixel_aspect)), height
    return width, height
