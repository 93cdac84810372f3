"""What a probe learns about a video: reported by the worker, read by the server."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from protocol.results import Video


@dataclass(frozen=True)
class VideoInfo:
    filename: str
    duration_seconds: float
    width: int  # as displayed, i.e. after rotation
    height: int
    fps: float
    rotation: int = 0  # degrees clockwise the frames must be turned for display
    has_audio: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> Video:
        """The `video` object of API.md results."""
        return Video(
            filename=self.filename,
            duration_seconds=self.duration_seconds,
            width=self.width,
            height=self.height,
            fps=self.fps,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoInfo:
        """Rebuild from `to_dict` output; raises KeyError/TypeError/ValueError if malformed."""
        return cls(
            filename=str(data["filename"]),
            duration_seconds=float(data["duration_seconds"]),
            width=int(data["width"]),
            height=int(data["height"]),
            fps=float(data["fps"]),
            rotation=int(data.get("rotation", 0)),
            has_audio=bool(data.get("has_audio", False)),
        )
