"""The MP4 box reader the layout checks rely on: 32-bit, 64-bit and to-the-end sizes."""

from __future__ import annotations

import pytest

from tests.inference_worker.mp4_boxes import top_level_boxes


def box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def test_boxes_are_listed_in_file_order_whatever_the_width_of_their_size(tmp_path):
    large = b"\x00\x00\x00\x01mdat" + (16 + 5).to_bytes(8, "big") + b"media"
    to_the_end = b"\x00\x00\x00\x00free" + b"padding"
    path = tmp_path / "layout.mp4"
    path.write_bytes(box(b"ftyp", b"isom") + large + box(b"moov", b"index") + to_the_end)
    assert top_level_boxes(path) == ["ftyp", "mdat", "moov", "free"]


def test_a_box_too_small_to_hold_its_header_is_an_error_not_a_loop(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(box(b"ftyp", b"isom") + b"\x00\x00\x00\x01mdat" + bytes(8))
    with pytest.raises(ValueError, match="not an MP4"):
        top_level_boxes(path)
