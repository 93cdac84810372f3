"""The records of resumable (tus) uploads: what each upload is, and how far it got.

A record is created by the tus `POST`, moved forward by each `PATCH` (compare-and-set on
the offset, so two requests racing for one upload cannot both win), and keeps the id of
the session the upload became once its last byte landed, so that `HEAD` can still say
it. Records live where the sessions live: SQLite on one machine, Redis on a cluster, so a
client resumes on any node. A per-upload lock, with a lease that lapses when its node
dies, keeps one request at a time writing an upload's bytes.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from server.storage.files import Resumable


@dataclass(frozen=True)
class TusRecord:
    """One resumable upload."""

    id: str
    length: int  # Upload-Length: the whole file, in bytes
    upload: Resumable  # where its bytes are kept, and how many
    expires_at: datetime  # Upload-Expires; an unfinished upload past it is gone (410)
    created_at: datetime
    filename: str = ""
    # The session it asks for, validated at creation, as the multipart upload takes them.
    analysis_type: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None
    session_id: str | None = None  # set once the last byte landed and the session exists

    @property
    def offset(self) -> int:
        return self.upload.offset

    @property
    def complete(self) -> bool:
        return self.upload.offset == self.length


class UploadBusy(Exception):
    """Another request (on this node or another) is writing this upload now."""


class TusRecords(Protocol):
    async def create(self, record: TusRecord) -> None:
        """Store a new record (its id is new)."""

    async def get(self, upload_id: str) -> TusRecord | None:
        """The record, or None if there is none (never created, deleted)."""

    async def advance(self, upload_id: str, expected_offset: int, upload: Resumable) -> bool:
        """Store `upload` as the record's new state if its offset is still
        `expected_offset`; False (and nothing changed) otherwise."""

    async def set_session(self, upload_id: str, session_id: str) -> None:
        """Note the session the finished upload became."""

    async def delete(self, upload_id: str) -> None:
        """Forget the record; missing is fine."""

    async def expired(self, now: datetime) -> list[TusRecord]:
        """Records of unfinished uploads whose `expires_at` is before `now`."""

    async def forget_finished(self, now: datetime) -> int:
        """Delete the records of uploads that became sessions once their `expires_at` is
        past (a client that lost the last answer has until then to HEAD it); how many."""

    async def unfinished(self) -> set[str]:
        """The ids of every upload with no session yet (their files are no orphans)."""

    def writing(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        """Hold the upload's write lock while the block runs; raises UploadBusy at once if
        another holder has it. On a cluster the lock is leased and renewed while held,
        so a node that dies holding it frees it within a lease."""
