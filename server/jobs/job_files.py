"""A job's files on the node that runs it: the video brought to local scratch, the worker's
output folder, and its artifacts stored before the session may say `completed`.

With files under DATA_DIR there is nothing to bring or keep: the worker reads the upload
where it landed and writes where the artifacts are served from. With a bucket, the node
fetches the video into DATA_DIR/scratch/<session id>/ (its own disk, shared with no one),
the worker writes there, and the artifacts go to the bucket before `completed`. Scratch
goes when the job ends, however it ends; a node killed mid-job sweeps it at its next start.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from server.storage.files import SessionFiles, StorageUnavailable

log = logging.getLogger("server.jobs.job_files")
T = TypeVar("T")

# A store that failed a write is asked again after 1, 2, 4 and 8 s: a blip of up to about
# a quarter of a minute costs a job nothing; a longer outage fails it with a clear error.
STORE_ATTEMPTS = 5
FIRST_RETRY_SECONDS = 1.0


class JobFilesLost(Exception):
    """The store would not give the video or take the artifacts, even after retries."""


@dataclass(frozen=True)
class WorkerFiles:
    """What the worker of one job reads and where it writes, on this node's disk."""

    video: Path
    output: Path


class JobFiles:
    """Brings a job's video to this node and keeps its artifacts, through `files`."""

    def __init__(
        self,
        files: SessionFiles,
        scratch: Path,
        *,
        attempts: int = STORE_ATTEMPTS,
        first_retry_seconds: float = FIRST_RETRY_SECONDS,
    ) -> None:
        self._files = files
        self._scratch = scratch
        self._attempts = attempts
        self._first_retry = first_retry_seconds

    def sweep_scratch(self) -> None:
        """Remove what jobs of a previous process left in scratch (a kill -9 mid-job)."""
        if self._files.local or not self._scratch.is_dir():
            return
        for entry in self._scratch.iterdir():
            log.info("removing scratch %s left by a previous process", entry.name)
            shutil.rmtree(entry, ignore_errors=True)

    async def prepare(self, session_id: str, upload: str, artifacts: str) -> WorkerFiles:
        """The video as a local file and an empty output folder for the worker."""
        folder = self._scratch / session_id
        if not self._files.local:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        video = await self._patiently(
            lambda: self._files.bring_local(upload, folder), "read the video from"
        )
        output = self._files.worker_output(artifacts, folder)
        await asyncio.to_thread(output.mkdir, parents=True, exist_ok=True)
        return WorkerFiles(video, output)

    async def keep(self, output: Path, artifacts: str) -> None:
        """Store the worker's output at `artifacts`; JobFilesLost if the store keeps failing."""
        await self._patiently(lambda: self._files.keep_artifacts(output, artifacts), "store to")

    async def discard(self, artifacts: str) -> None:
        """Remove what an earlier attempt stored, so a new attempt starts clean.

        One try: a store away now only leaves old files that the new attempt overwrites
        or the session's cleanup removes, which is no reason to hold up the job.
        """
        try:
            await self._files.discard_artifacts(artifacts)
        except StorageUnavailable as exc:
            log.warning("could not clear earlier artifacts at %s (%s)", artifacts, exc)

    async def release(self, session_id: str) -> None:
        """Remove the job's scratch; nothing to do when files are local."""
        if not self._files.local:
            await asyncio.to_thread(shutil.rmtree, self._scratch / session_id, True)

    async def _patiently(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        delay = self._first_retry
        for attempt in range(1, self._attempts + 1):
            try:
                return await operation()
            except StorageUnavailable as exc:
                if attempt == self._attempts:
                    raise JobFilesLost(
                        f"Could not {what} the file store ({self._files.description}) after "
                        f"{attempt} attempts: {exc}"
                    ) from exc
                log.warning("could not %s the file store (%s); again in %g s", what, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")
