"""Where a session's files live under DATA_DIR. Every server path is chosen here.

Several nodes share one DATA_DIR (a shared volume: NFS, a ReadWriteMany volume), so the
same `DataPaths` serves one process and a cluster; `FileLocations` is what callers need.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class FileLocations(Protocol):
    """Where uploads and artifacts of each session live, and how they go."""

    @property
    def uploads(self) -> Path:
        """The folder holding one folder of upload per session."""

    @property
    def artifacts(self) -> Path:
        """The folder holding one folder of worker output per session."""

    def upload_dir(self, session_id: str) -> Path:
        """Where the session's upload is written."""

    def output_dir(self, session_id: str) -> Path:
        """Where the session's worker writes its artifacts."""

    def create(self) -> None:
        """Make the top folders if they are missing."""

    def remove_session_files(self, session_id: str) -> None:
        """Delete the upload and every artifact of a session; missing ones are fine."""


@dataclass(frozen=True)
class DataPaths:
    """`FileLocations` on a filesystem: DATA_DIR/uploads/<id>/ holds the upload,
    DATA_DIR/artifacts/<id>/ the worker's output."""

    root: Path

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def upload_dir(self, session_id: str) -> Path:
        return self.uploads / session_id

    def output_dir(self, session_id: str) -> Path:
        return self.artifacts / session_id

    def create(self) -> None:
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)

    def remove_session_files(self, session_id: str) -> None:
        """Delete the upload and every artifact of a session; missing ones are fine."""
        for folder in (self.upload_dir(session_id), self.output_dir(session_id)):
            shutil.rmtree(folder, ignore_errors=True)
