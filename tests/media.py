"""Synthetic media for tests, made with PyAV and numpy: good videos and every kind of bad one.

Every frame of `write_video` carries its own index, so a test can tell which frame a sampler
returned: the displayed picture is a 4x4 grid whose top-left cell is a red orientation marker
and whose other 15 cells are the bits of the frame index (white = 1, black = 0), in reading
order. `read_frame_index` decodes a displayed RGB image back to that index. A faint moving
texture over the grid gives the encoder real motion to code, as in camera footage.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

GRID = 4
INDEX_BITS = GRID * GRID - 1
AUDIO_RATE = 48_000
AUDIO_FRAME_SAMPLES = 1024  # the AAC encoder takes exactly this many samples per frame
TONE_HZ = 440.0

# Limited-range BT.601 levels: the texture (0..40) is added to black and taken from white,
# so the bits stay far from the 50% threshold after lossy coding and resizing.
_BLACK, _WHITE, _TEXTURE = 16, 235, 40
_RED_YUV = (81, 90, 240)


def write_video(
    path: Path | str,
    seconds: float = 4.0,
    width: int = 160,
    height: int = 120,
    fps: int = 10,
    audio: bool = False,
    rotation: int = 0,
    gop: int | None = None,
    grain: int = 0,
) -> Path:
    """Write an H.264 (yuv420p) MP4 whose frame i shows index i; return its path.

    `width` x `height` is the coded size; `rotation` (0/90/180/270, clockwise, as
    `VideoInfo.rotation`) is stored as a display matrix, and the pixels are coded turned the
    other way, so the picture *as displayed* has the marker top-left. `gop` is the keyframe
    interval in frames (None: the encoder's default). With `audio`, a 440 Hz AAC tone runs
    for the whole clip. `grain` adds sensor-like noise of up to that many luma levels, new
    in every frame, so the clip codes at a camera's bitrate (for benchmarks; tests leave it 0).
    The moov atom is written at the front (`+faststart`), so a truncated copy still has a
    readable header: the harder case for a probe.
    """
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, not {rotation}")
    if width % 2 or height % 2:
        raise ValueError("yuv420p needs an even width and height")
    path = Path(path)
    frame_count = max(1, round(seconds * fps))
    turns = rotation // 90
    display_w, display_h = (height, width) if turns % 2 else (width, height)

    with av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        # superfast keeps B-frames (unlike ultrafast), so readers meet reordered frames.
        video.options = {"preset": "superfast", "crf": "28"}
        if gop is not None:
            video.codec_context.gop_size = gop
            video.options = {**video.options, "x264-params": "scenecut=0"}
        if rotation:
            video.set_display_rotation(-rotation)
        tone = None
        if audio:
            tone = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        painter = _Painter(display_w, display_h, grain)
        samples_written = 0
        for index in range(frame_count):
            planes = [np.rot90(plane, turns) for plane in painter.paint(index)]
            frame = _yuv420p_frame(planes)
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
            if tone is not None:
                until = round((index + 1) / fps * AUDIO_RATE)
                while samples_written < until:
                    out.mux(tone.encode(_tone_frame(samples_written)))
                    samples_written += AUDIO_FRAME_SAMPLES
        out.mux(video.encode(None))
        if tone is not None:
            out.mux(tone.encode(None))
    return path


def remux(source: Path | str, path: Path | str, container_format: str) -> Path:
    """Copy `source`'s packets, unchanged, into another container; return its path.

    `container_format` is "matroska", "mpegts", or "h264" for a raw stream: no container,
    no timestamps, no index, no seeking, and no audio.
    """
    path = Path(path)
    with av.open(str(source)) as src, av.open(str(path), "w", format=container_format) as out:
        streams = [src.streams.video[0]]
        if container_format != "h264":
            streams += list(src.streams.audio)
        copies = {stream.index: out.add_stream_from_template(stream) for stream in streams}
        for packet in src.demux(streams):
            if packet.dts is None:
                continue  # the empty packet that ends each stream
            packet.stream = copies[packet.stream.index]
            out.mux(packet)
    return path


def read_frame_index(image: Image.Image) -> int:
    """The index `write_video` painted on a displayed frame; ValueError if it is not upright."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    cells = []
    for row in range(GRID):
        for col in range(GRID):
            # The central half of a cell: its edges blur into neighbours after resizing.
            y0, y1 = int((row + 0.25) * height / GRID), int((row + 0.75) * height / GRID)
            x0, x1 = int((col + 0.25) * width / GRID), int((col + 0.75) * width / GRID)
            cells.append(rgb[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].mean(axis=(0, 1)))
    red, green, _ = cells[0]
    if not (red > 150 and green < 100):
        raise ValueError("the orientation marker is not in the top-left corner")
    return sum(1 << bit for bit, cell in enumerate(cells[1:]) if cell.mean() > 128)


def write_zero_bytes(path: Path | str) -> Path:
    """An empty file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_text_file(path: Path | str) -> Path:
    """A text file named like a video."""
    path = Path(path)
    path.write_text("This is a shopping list, not a video.\nmilk\neggs\n" * 20)
    return path


def write_truncated(path: Path | str, source: Path | str, keep: float = 0.5) -> Path:
    """The first `keep` fraction of `source`'s bytes, as an interrupted upload leaves it."""
    path = Path(path)
    data = Path(source).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_audio_only(path: Path | str, seconds: float = 2.0) -> Path:
    """An MP4/M4A holding only an AAC tone (the container follows the suffix)."""
    path = Path(path)
    container_format = "ipod" if path.suffix == ".m4a" else "mp4"
    with av.open(str(path), "w", format=container_format) as out:
        tone = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        for start in range(0, round(seconds * AUDIO_RATE), AUDIO_FRAME_SAMPLES):
            out.mux(tone.encode(_tone_frame(start)))
        out.mux(tone.encode(None))
    return path


def write_still_image(path: Path | str, width: int = 160, height: int = 120) -> Path:
    """A PNG or JPEG (by suffix) of a frame-0 picture."""
    path = Path(path)
    planes = _Painter(width, height).paint(0)
    image = _yuv420p_frame(planes).to_image()
    image.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


def write_random_bytes(path: Path | str, size: int = 64 * 1024, seed: int = 7) -> Path:
    """Bytes with no structure at all."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


class _Painter:
    """Paints the displayed picture of frame i as full-size Y and half-size U, V planes."""

    def __init__(self, width: int, height: int, grain: int = 0) -> None:
        self.width, self.height = width, height
        # A few noise fields taken in turn: no frame's noise predicts the next one's.
        rng = np.random.default_rng(0)
        self.grain = [
            rng.integers(-grain, grain + 1, (height, width), np.int16)
            for _ in range(7 if grain else 0)
        ]
        rows = np.arange(height) * GRID // height
        cols = np.arange(width) * GRID // width
        self.cell = (rows[:, None] * GRID + cols[None, :]).astype(np.int16)
        ys, xs = np.mgrid[0:height, 0:width]
        self.diagonal = ((xs + ys) % 64).astype(np.intp)
        self.wave = (_TEXTURE / 2 * (1 + np.sin(np.arange(64) * 2 * math.pi / 64))).astype(np.uint8)
        chroma_h, chroma_w = height // 2, width // 2
        self.u = np.full((chroma_h, chroma_w), 128, np.uint8)
        self.v = np.full((chroma_h, chroma_w), 128, np.uint8)
        marker = self.cell[::2, ::2] == 0
        self.u[marker], self.v[marker] = _RED_YUV[1], _RED_YUV[2]

    def paint(self, index: int) -> list[np.ndarray]:
        if index >= 1 << INDEX_BITS:
            raise ValueError(f"frame index {index} does not fit in {INDEX_BITS} bits")
        levels = np.array(
            [_RED_YUV[0]] + [_WHITE if index >> bit & 1 else _BLACK for bit in range(INDEX_BITS)],
            np.int16,
        )
        texture = np.roll(self.wave, -4 * index)[self.diagonal].astype(np.int16)
        luma = levels[self.cell]
        luma = np.where(
            luma == _WHITE, luma - texture, np.where(luma == _BLACK, luma + texture, luma)
        )
        if self.grain:
            luma = np.clip(luma + self.grain[index % len(self.grain)], 0, 255)
        return [luma.astype(np.uint8), self.u, self.v]


def _yuv420p_frame(planes: list[np.ndarray]) -> av.VideoFrame:
    y, u, v = (np.ascontiguousarray(plane) for plane in planes)
    height, width = y.shape
    packed = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
    return av.VideoFrame.from_ndarray(packed.reshape(height * 3 // 2, width), format="yuv420p")


def _tone_frame(first_sample: int) -> av.AudioFrame:
    t = (first_sample + np.arange(AUDIO_FRAME_SAMPLES)) / AUDIO_RATE
    samples = (0.3 * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = AUDIO_RATE
    frame.pts = first_sample
    frame.time_base = Fraction(1, AUDIO_RATE)
    return frame
