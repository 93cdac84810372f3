"""Fixtures shared by every tier: the tiny real SmolVLM2 and synthetic videos.

Both are made here, offline, by the project's own code: the model by
`inference_worker.tiny_model`, the videos by `tests.media`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub; a missing local model must fail, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight SmolVLM2 on disk, built once per test run."""
    from inference_worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-smolvlm2"))


@pytest.fixture(scope="session")
def steered_model_dir(tmp_path_factory) -> Path:
    """The tiny SmolVLM2 with weights steered so that every reply is "8".

    Random weights never produce a parseable score, so end-to-end runs with them find no
    highlight; this one judges every segment significant, so reels and thumbnails get made.
    """
    from inference_worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("steered-smolvlm2"), answer="8")


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory) -> Path:
    """A 12 s 160x120 H.264 clip with an AAC audio track, shared read-only by tests."""
    from tests.media import write_video

    return write_video(tmp_path_factory.mktemp("videos") / "sample.mp4", seconds=12.0, audio=True)


@pytest.fixture
def make_video(tmp_path):
    """Factory: `make_video(name, **options)` writes a synthetic video into this test's tmp dir."""
    from tests.media import write_video

    def make(name: str = "clip.mp4", **options) -> Path:
        return write_video(tmp_path / name, **options)

    return make
