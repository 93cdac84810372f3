"""Frame sampling: VideoReader against decoding every frame, swscale against PIL resizing.

The clip is made in a temporary directory like phone footage: 1280x720 at 30 fps, a keyframe
every 2 s, B-frames, and grain that brings it to a camera's bitrate, since
a clean synthetic picture decodes unrealistically fast. Each figure is the best of a few
runs, and its baseline is measured in the same run on the same clip.

32 frames over 60 s is about one per keyframe interval, the hardest case for seeking: each
frame still costs the decoding from its keyframe, half an interval on average, so the ratio
cannot fall far below 0.5 here; over a longer video it falls in proportion to the length.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import av
from PIL import Image

from bench.common import best_of, row
from inference_worker.video import VideoReader, sample_frames, scaled_size
from tests.media import write_video

SAMPLES = 32  # frames spread over a minute, as an overview of a whole video
MAX_EDGE = 512  # the frame size SmolVLM2 takes
FPS = 30
KEYFRAME_SECONDS = 2
GRAIN = 16  # luma levels of noise: about 7 Mbit/s at 720p30, as phones record
DECODE_REPEATS = 2  # each run decodes for seconds: steady enough
RESIZE_REPEATS = 5  # each run takes tens of milliseconds: more exposed to neighbours


def run(quick: bool = False) -> list[dict]:
    """Measure; `quick` uses a 12 s clip instead of 60 s, sampled as densely."""
    seconds = 12.0 if quick else 60.0
    samples = round(SAMPLES * seconds / 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp:
        clip = write_video(
            Path(tmp) / "phone.mp4",
            seconds=seconds,
            width=1280,
            height=720,
            fps=FPS,
            gop=FPS * KEYFRAME_SECONDS,
            grain=GRAIN,
        )
        times = [(i + 0.5) * seconds / samples for i in range(samples)]
        sampled = best_of(DECODE_REPEATS, lambda: sample_frames(clip, times, MAX_EDGE))
        decoded_all = best_of(DECODE_REPEATS, lambda: decode_every_frame(clip))
        with VideoReader(clip, MAX_EDGE) as reader:
            frames = [decoded.frame for decoded in reader.decoded_at(times)]
        size = scaled_size(frames[0].width, frames[0].height, MAX_EDGE)
        reformatted = best_of(
            RESIZE_REPEATS,
            lambda: [
                f.reformat(width=size[0], height=size[1], format="rgb24").to_image() for f in frames
            ],
        )
        pil = best_of(
            RESIZE_REPEATS,
            lambda: [f.to_image().resize(size, Image.Resampling.BILINEAR) for f in frames],
        )
    return [
        row(
            "frame sampling",
            f"{samples} frames over {seconds:g} s of 720p30, keyframe every {KEYFRAME_SECONDS} s",
            sampled,
            "decode every frame",
            decoded_all,
            "< 0.75x",
        ),
        row(
            "frame resize",
            f"{samples} 720p frames to {size[0]}x{size[1]} RGB, swscale reformat",
            reformatted,
            "PIL to_image + bilinear resize",
            pil,
            "< 0.5x",
        ),
    ]


def decode_every_frame(clip: Path) -> int:
    """The naive sampler's cost: decode the whole clip, threaded as VideoReader is."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


if __name__ == "__main__":
    for result in run():
        print(result)
