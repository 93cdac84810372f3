"""Saving a downloaded body (an export, chapters, a video) to a file or to stdout.

A file is written beside its target under a temporary name and renamed into place only
once the whole body arrived, so a dropped connection never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import aiohttp

STDOUT = "-"
# Large enough to keep a video download cheap, small enough to stay far from memory limits.
CHUNK_BYTES = 1 << 20


class DownloadRefused(Exception):
    """The body will not be saved where it would go; `str()` says what to do instead."""


def server_file_name(response: aiohttp.ClientResponse) -> str | None:
    """The file name of the response's Content-Disposition, reduced to a bare name.

    RFC 6266 asks a client to drop any directory part: the server names a file, it does
    not choose where it lands.
    """
    disposition = response.content_disposition
    raw = disposition.filename if disposition is not None else None
    name = Path((raw or "").replace("\\", "/")).name
    return None if name in ("", ".", "..") else name


async def save(
    response: aiohttp.ClientResponse, target: str, stdout: BinaryIO, *, replace: bool = True
) -> int:
    """Write the response body to the file `target` (or `stdout` for "-"); the byte count.

    Without `replace`, an existing file is refused rather than overwritten.
    """
    if target == STDOUT:
        return await _copy(response, stdout)
    with _file_in_place(Path(target), replace) as file:
        return await _copy(response, file)


@contextlib.contextmanager
def _file_in_place(path: Path, replace: bool) -> Iterator[BinaryIO]:
    """A temporary file beside `path`, renamed to it when the block ends without error."""
    if not replace and path.exists():
        raise DownloadRefused(f"{path} exists already; to replace it, pass -o {path}")
    if path.is_dir():
        raise DownloadRefused(f"{path} is a directory; pass -o with a file name")
    if not path.parent.is_dir():
        raise DownloadRefused(f"no such directory: {path.parent}")
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
        # mkstemp makes the file 0600; a saved download gets the usual mode (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


async def _copy(response: aiohttp.ClientResponse, sink: BinaryIO) -> int:
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        sink.write(chunk)
        size += len(chunk)
    sink.flush()
    return size


def human_size(size: int) -> str:
    """Bytes as a person reads them: 812 bytes, 14.2 KiB, 3.1 MiB."""
    if size < 1024:
        return f"{size} bytes" if size != 1 else "1 byte"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"
