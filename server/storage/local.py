"""`SessionFiles` on this node's disk: DATA_DIR/uploads/<id>/ and DATA_DIR/artifacts/<id>/.

The embedded default, and what a cluster sharing one volume uses. A location is an
absolute path, so nothing is copied: the worker reads the upload where it landed and
writes its artifacts where they are served from.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, TypeVar

from server.storage.files import Resumable, StoredFile, inside, source_name
from server.storage.paths import DataPaths

READ_CHUNK_BYTES = 256 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

T = TypeVar("T")


class DiskFull(Exception):
    """The disk has no room for this file."""


class LocalUpload:
    """A file written in a thread chunk by chunk; `abort` removes it and its folder."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # A plain open, not aiofiles': an open run in a thread cannot be cancelled half-way,
        # so a client leaving at that moment would leak the handle.
        self._file = open(path, "wb")  # noqa: SIM115 - closed by finish or abort
        self._size = 0

    async def write(self, chunk: bytes) -> None:
        await _on_disk(self._file.write, chunk)
        self._size += len(chunk)

    async def finish(self) -> int:
        # Small chunks wait in the file's buffer: flushing them is a write like the others
        # (a full disk shows here, as DiskFull). Closing then waits for a write still
        # running in its thread.
        await _on_disk(lambda _: self._file.flush(), None)
        self._file.close()
        return self._size

    async def abort(self) -> None:
        # Not in a thread: this runs while the task may be cancelled, and it is one file.
        # Closing flushes what the buffer holds, which fails again on a full disk: the
        # file goes anyway.
        with contextlib.suppress(OSError):
            self._file.close()
        shutil.rmtree(self._path.parent, ignore_errors=True)


class LocalFiles:
    """`SessionFiles` whose locations are paths under DATA_DIR."""

    def __init__(self, paths: DataPaths) -> None:
        self._paths = paths

    @property
    def description(self) -> str:
        return f"DATA_DIR {self._paths.root}"

    @property
    def local(self) -> bool:
        return True

    def upload_location(self, session_id: str, filename: str) -> str:
        return str(self._paths.upload_dir(session_id) / source_name(filename))

    def artifacts_location(self, session_id: str) -> str:
        return str(self._paths.output_dir(session_id))

    def artifact(self, artifacts: str, name: str) -> str | None:
        relative = inside(name)
        if relative is None:
            return None
        folder = Path(artifacts).resolve()
        path = (folder / relative).resolve()  # a symlink out of the folder is refused too
        return str(path) if path.is_relative_to(folder) else None

    async def check(self) -> None:
        self._paths.create()
        probe = self._paths.root / ".write-check"
        probe.write_bytes(b"ok")
        probe.unlink()

    async def start_upload(self, location: str) -> LocalUpload:
        return LocalUpload(Path(location))

    async def probe_source(self, location: str) -> str:
        return location

    async def bring_local(self, location: str, scratch: Path) -> Path:
        return Path(location)

    def worker_output(self, artifacts: str, scratch: Path) -> Path:
        return Path(artifacts)

    async def keep_artifacts(self, folder: Path, artifacts: str) -> None:
        return None  # the worker wrote them where they stay

    async def discard_artifacts(self, artifacts: str) -> None:
        await asyncio.to_thread(shutil.rmtree, artifacts, True)

    async def stat(self, location: str) -> StoredFile | None:
        # One stat syscall on a served path, like FileResponse's own: not worth a thread.
        try:
            info = os.stat(location)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        modified = datetime.fromtimestamp(info.st_mtime, timezone.utc)
        return StoredFile(location, info.st_size, last_modified=modified, path=Path(location))

    async def read(self, location: str, start: int, end: int) -> AsyncIterator[bytes]:
        with open(location, "rb") as source:  # noqa: ASYNC230 - one open; reads in a thread
            source.seek(start)
            left = end - start
            while left > 0:
                chunk = await asyncio.to_thread(source.read, min(READ_CHUNK_BYTES, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    async def signed_url(self, location: str, seconds: int) -> str | None:
        return None

    async def remove_session(self, upload: str, artifacts: str) -> None:
        await asyncio.to_thread(_remove, Path(upload).parent, Path(artifacts))

    async def holders(self) -> dict[str, datetime]:
        return await asyncio.to_thread(self._holders)

    async def remove_orphan(self, session_id: str) -> None:
        await asyncio.to_thread(
            _remove, self._paths.upload_dir(session_id), self._paths.output_dir(session_id)
        )

    async def abort_stale_uploads(
        self, started_before: datetime, keep: Collection[str] = ()
    ) -> int:
        return 0  # an unfinished upload here is a folder of no session: `holders` has it

    async def begin_resumable(self, location: str) -> Resumable:
        """An empty file at `location`, its folder's entry on disk (so a crash keeps it)."""
        await asyncio.to_thread(_created_empty, Path(location))
        return Resumable(location, 0)

    async def append_resumable(self, upload: Resumable, chunks: AsyncIterator[bytes]) -> Resumable:
        """Write the chunks at `upload.offset`, in place, and fsync before answering.

        Bytes past the offset (a node that died mid-append, an iterator that failed) are
        cut off first: the offset, not the file's size, says what was acknowledged. A file
        shorter than the offset has lost acknowledged bytes: FileNotFoundError."""
        path = Path(upload.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A plain open, as LocalUpload's; the file is buffered, so closing it waits for a
        # call still running in its thread (a cancelled append never closes under one).
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, "r+b") as file:
            await asyncio.to_thread(_cut_to, file, upload.offset, upload.location)
            written = 0
            async for chunk in chunks:
                await _on_disk(file.write, chunk)
                written += len(chunk)
            await _on_disk(_flush_to_disk, file)
        return Resumable(upload.location, upload.offset + written)

    async def finish_resumable(self, upload: Resumable) -> None:
        """Cut off what lies past the offset: the file is then the upload, where it is."""
        await asyncio.to_thread(_truncated, Path(upload.location), upload.offset)

    async def abort_resumable(self, upload: Resumable) -> None:
        await asyncio.to_thread(shutil.rmtree, Path(upload.location).parent, True)

    async def close(self) -> None:
        return None

    def _holders(self) -> dict[str, datetime]:
        found: dict[str, datetime] = {}
        for parent in (self._paths.uploads, self._paths.artifacts):
            for entry in parent.iterdir() if parent.is_dir() else ():
                changed = _last_change(entry)
                if changed is None:
                    continue
                found[entry.name] = max(changed, found.get(entry.name, changed))
        return found

    def __repr__(self) -> str:
        return f"<LocalFiles {self._paths.root}>"


async def _on_disk(write: Callable[[T], object], argument: T) -> None:
    """`write(argument)` in a thread; a full disk raises DiskFull."""
    try:
        await asyncio.to_thread(write, argument)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFull(str(exc)) from None
        raise


def _created_empty(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _cut_to(file: BinaryIO, offset: int, location: str) -> None:
    """Truncate `file` to `offset` and place the position there."""
    size = file.seek(0, os.SEEK_END)
    if size < offset:
        raise FileNotFoundError(f"{location}: {size} bytes kept, the upload says {offset}")
    file.truncate(offset)
    file.seek(offset)


def _flush_to_disk(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _truncated(path: Path, size: int) -> None:
    """Cut `path` to `size` bytes (made empty if it is missing and `size` is 0)."""
    if size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "r+b" if size else "ab") as file:
        _cut_to(file, size, str(path))


def _remove(*entries: Path) -> None:
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _last_change(entry: Path) -> datetime | None:
    """When `entry` or whatever lies directly in it last changed; None if it is gone."""
    try:
        paths = [entry, *(entry.iterdir() if entry.is_dir() and not entry.is_symlink() else ())]
        latest = max(os.lstat(path).st_mtime for path in paths)
    except FileNotFoundError:
        return None
    return datetime.fromtimestamp(latest, timezone.utc)
