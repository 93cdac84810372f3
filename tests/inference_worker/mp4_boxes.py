"""Reading an MP4's layout in tests: which top-level boxes it has, in file order."""

from __future__ import annotations

from pathlib import Path


def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4's top-level boxes, in file order ("ftyp", "moov", "mdat", ...).

    Each box starts with a 4-byte big-endian size and a 4-byte type; size 1 means a 64-bit
    size follows the type, size 0 means the box runs to the end of the file.
    """
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        boxes.append(data[offset + 4 : offset + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:
            size = len(data) - offset
        if size < 8:
            raise ValueError(f"a box of {size} bytes at offset {offset}: not an MP4")
        offset += size
    return boxes
