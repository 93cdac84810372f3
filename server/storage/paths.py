"""The layout of DATA_DIR. Every server path under it is chosen here.

With files under DATA_DIR (the default), uploads/<id>/ holds a session's upload and
artifacts/<id>/ its worker's output; several nodes may share one DATA_DIR (NFS, a
ReadWriteMany volume). With a bucket (STORAGE_URL), DATA_DIR is this node's alone:
scratch/<id>/ holds a running job's video and output until the job ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataPaths:
    root: Path

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    def upload_dir(self, session_id: str) -> Path:
        return self.uploads / session_id

    def output_dir(self, session_id: str) -> Path:
        return self.artifacts / session_id

    def create(self) -> None:
        """Make the top folders if they are missing."""
        for folder in (self.uploads, self.artifacts, self.scratch):
            folder.mkdir(parents=True, exist_ok=True)
