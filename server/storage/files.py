"""What the server needs of the place that keeps session files: `SessionFiles`.

Two implementations: `LocalFiles` (folders under DATA_DIR, the embedded default) and
`S3Files` (a bucket of any S3-compatible store, so that nodes share no disk). Callers
never build a path or a key: a session keeps two opaque *locations* (`Session.upload_path`,
`Session.output_dir`) that only the store that made them reads.

What runs where:
- the edge streams an upload in (`start_upload`) and serves files out (`stat`, `read`,
  `signed_url`);
- the probe and the worker read local files or URLs (`probe_source`, `bring_local`), and
  the worker writes into a local folder whose files are kept before the job says
  `completed` (`worker_output`, `keep_artifacts`);
- cleanup, expiry and the sweep remove what belongs to no session (`remove_session`,
  `holders`, `abort_stale_uploads`);
- a resumable (tus) upload grows request by request, on any node, from a `Resumable` its
  record keeps (`begin_resumable`, `append_resumable`, `finish_resumable`,
  `abort_resumable`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

# How long a client waits before trying again when the store is away.
STORE_RETRY_AFTER_SECONDS = 5
_EXTENSION = re.compile(r"[a-z0-9]{1,5}")


class StorageUnavailable(Exception):
    """The file store cannot be reached now (network, 5xx, timeouts): try again later."""

    retry_after_seconds = STORE_RETRY_AFTER_SECONDS


class StorageMisconfigured(Exception):
    """The file store answers but refuses us (bucket missing, credentials wrong): not a blip."""


class Upload(Protocol):
    """A file being written: `write` its chunks in order, then `finish` or `abort`."""

    async def write(self, chunk: bytes) -> None:
        """Append a chunk; memory held stays bounded (a part at most) whatever the size."""

    async def finish(self) -> int:
        """Make the file whole and visible; its size in bytes."""

    async def abort(self) -> None:
        """Leave nothing behind (no file, no unfinished multipart upload). Safe to repeat."""


@dataclass(frozen=True)
class StoredFile:
    """A file as the edge serves it: a local path (served as a file), or an object."""

    location: str
    size: int
    etag: str | None = None
    last_modified: datetime | None = None
    path: Path | None = None  # set when the file is on this node's disk


@dataclass(frozen=True)
class Resumable:
    """How far a resumable upload's bytes are kept, as its record stores it: enough for any
    node to append the next request's bytes or to finish it. `handle` is the store's own
    (JSON text: a multipart upload's id and parts, and where the bytes short of a whole
    part wait; empty for a local file)."""

    location: str
    offset: int
    handle: str = ""


class SessionFiles(Protocol):
    """Where uploads and artifacts of sessions live, and how they come and go."""

    @property
    def description(self) -> str:
        """Where files go, for logs ("DATA_DIR data", "s3://bucket/prefix")."""

    @property
    def local(self) -> bool:
        """True when locations are files of this node's disk (no copy, no upload needed)."""

    def upload_location(self, session_id: str, filename: str) -> str:
        """Where the upload of a session whose client calls it `filename` goes."""

    def artifacts_location(self, session_id: str) -> str:
        """Where a session's artifacts go."""

    def artifact(self, artifacts: str, name: str) -> str | None:
        """The location of artifact `name` (as the worker named it), or None if the name
        would leave the session's artifacts (absolute, `..`)."""

    async def check(self) -> None:
        """Write, read and delete a small file; raise with one line saying what is wrong."""

    async def start_upload(self, location: str) -> Upload:
        """A new file at `location`, written as it arrives."""

    async def probe_source(self, location: str) -> str:
        """What a probe process opens to read the file: a path, or a short-lived URL."""

    async def bring_local(self, location: str, scratch: Path) -> Path:
        """A local file with the content of `location`: itself if it is one, else a copy
        fetched into `scratch` (a folder of this node's, removed by the caller)."""

    def worker_output(self, artifacts: str, scratch: Path) -> Path:
        """The folder a worker writes the artifacts into: `artifacts` itself if local,
        else a folder under `scratch` that `keep_artifacts` then stores."""

    async def keep_artifacts(self, folder: Path, artifacts: str) -> None:
        """Store every file under `folder` at `artifacts` (nothing to do if local).
        Raises StorageUnavailable if the store failed; the caller retries within bounds."""

    async def discard_artifacts(self, artifacts: str) -> None:
        """Remove what a previous attempt stored at `artifacts`; missing is fine."""

    async def stat(self, location: str) -> StoredFile | None:
        """The file at `location`, or None if there is none."""

    def read(self, location: str, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes `start` to `end` (exclusive) of the file, in chunks."""

    async def signed_url(self, location: str, seconds: int) -> str | None:
        """A URL anyone may GET for `seconds`, or None where the store cannot sign."""

    async def remove_session(self, upload: str, artifacts: str) -> None:
        """Delete a session's upload and artifacts; missing ones are fine."""

    async def holders(self) -> dict[str, datetime]:
        """Every session id that has files, with when they last changed (for the sweep)."""

    async def remove_orphan(self, session_id: str) -> None:
        """Delete every file stored for a session id the sweep found no session for."""

    async def abort_stale_uploads(
        self, started_before: datetime, keep: Collection[str] = ()
    ) -> int:
        """End unfinished uploads begun before `started_before`, but those of the session
        ids in `keep` (resumable uploads still going); how many were ended."""

    async def begin_resumable(self, location: str) -> Resumable:
        """A new, empty resumable upload at `location` (offset 0)."""

    async def append_resumable(self, upload: Resumable, chunks: AsyncIterator[bytes]) -> Resumable:
        """Keep the bytes of `chunks` after `upload.offset`; the new state.

        Every byte the iterator gave is kept when this returns (also bytes short of a
        store's minimum part: they wait where any node finds them). Memory stays bounded
        (about a part) however much the iterator gives. `upload` stays valid until the
        caller has stored the returned state: a node that dies mid-append loses nothing
        that was acknowledged. Raises StorageUnavailable if the store fails; then `upload`
        is still the truth.
        """

    async def finish_resumable(self, upload: Resumable) -> None:
        """Make the file at `upload.location` whole, as `finish` does for an `Upload`."""

    async def abort_resumable(self, upload: Resumable) -> None:
        """Remove every byte of the upload (file, multipart upload, waiting bytes)."""

    async def close(self) -> None:
        """Release connections."""


def source_name(filename: str) -> str:
    """The server's name for an upload: "source" plus a short, plain extension if any."""
    _, dot, ext = filename.rpartition(".")
    ext = ext.lower()
    return f"source.{ext}" if dot and _EXTENSION.fullmatch(ext) else "source"


def inside(name: str) -> str | None:
    """`name` as a relative POSIX path that stays inside its folder, or None."""
    if not name or name.startswith("/") or "\\" in name:
        return None
    normal = posixpath.normpath(name)
    if normal in (".", "..") or normal.startswith("../"):
        return None
    return normal
