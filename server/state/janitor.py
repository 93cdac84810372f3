"""The periodic sweep: expired sessions go with their files, and so do files of no session.

A session expires SESSION_TTL_HOURS after its last update, unless it is live (pending or
processing): a long queue or a long job never loses its upload. After a crash, the file
store can hold files no session owns (an upload cut off mid-stream, a session deleted
while its files were being removed, a session deleted while the bucket was away); those
go too, except the ones an upload is writing now. In a bucket, unfinished multipart
uploads (a node killed mid-upload) are ended once older than `orphan_grace`.

On a cluster, one node sweeps per round (whoever takes the sweep lock), and an upload
another node is receiving is invisible here: files of no session go only once nothing
of them has changed for `orphan_grace`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from server.state.models import SessionStatus, utcnow
from server.state.redis_connection import raise_if_cancelling
from server.state.sessions import Sessions
from server.state.tus_records import TusRecords
from server.storage.files import SessionFiles

log = logging.getLogger("server.state.janitor")

LIVE = (SessionStatus.PENDING, SessionStatus.PROCESSING)
# Even alone, an unfinished multipart upload may be another process's upload in progress.
MIN_UPLOAD_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class SweepReport:
    expired_sessions: int
    orphan_paths: int  # session ids whose files belonged to no session
    stale_uploads: int = 0  # unfinished multipart uploads ended
    expired_uploads: int = 0  # resumable uploads past their Upload-Expires


class Janitor:
    """Removes expired sessions and orphan files; `run` repeats `sweep` until cancelled."""

    def __init__(
        self,
        sessions: Sessions,
        files: SessionFiles,
        ttl: timedelta,
        *,
        uploading: Callable[[str], bool],
        clock: Callable[[], datetime] = utcnow,
        orphan_grace: timedelta = timedelta(0),
        turn: Callable[[], Awaitable[bool]] | None = None,
        resumable: TusRecords | None = None,
    ) -> None:
        """`turn()`, when given, says whether this process sweeps this round (a cluster lock)."""
        self._sessions = sessions
        self._files = files
        self._ttl = ttl
        self._uploading = uploading  # True for an id whose upload is being received now
        self._clock = clock
        self._orphan_grace = orphan_grace
        self._turn = turn
        self._resumable = resumable  # their unfinished uploads' bytes are no orphans

    async def sweep(self) -> SweepReport:
        """One pass over every session and every file of the store."""
        cutoff = self._clock() - self._ttl
        expired = 0
        for session in await self._sessions.list():
            if session.status not in LIVE and session.updated_at < cutoff:
                await self._sessions.delete(session.id)
                expired += 1
                log.info("session %s expired (last update %s)", session.id, session.updated_at)
        expired_uploads = await self._expire_resumable()
        # In this order, so that files which gain an owner while the sweep runs are kept:
        # what is being written now, then the unfinished uploads, then the sessions, all
        # asked after the files were listed. Files are written before their owner is stored
        # (an upload becomes a session, a resumable upload's record, only once its file
        # exists), and each owner is stored before the previous one lets go.
        holders = await self._files.holders()
        busy = {session_id for session_id in holders if self._uploading(session_id)}
        resuming = await self._resumable.unfinished() if self._resumable is not None else set()
        known = busy | resuming | {session.id for session in await self._sessions.list()}
        untouched_since = self._clock() - self._orphan_grace
        orphans = 0
        for session_id, changed in holders.items():
            if session_id in known:
                continue
            if self._orphan_grace and changed >= untouched_since:
                continue
            await self._files.remove_orphan(session_id)
            orphans += 1
            log.info("removed the files of %s, which belong to no session", session_id)
        # An upload in progress writes a part every few seconds; one older than the grace
        # (an hour on a cluster) whose node died is never finished.
        stale = await self._files.abort_stale_uploads(
            self._clock() - max(self._orphan_grace, MIN_UPLOAD_AGE), keep=resuming
        )
        return SweepReport(expired, orphans, stale, expired_uploads)

    async def _expire_resumable(self) -> int:
        """Remove the bytes and records of resumable uploads past their Upload-Expires."""
        if self._resumable is None:
            return 0
        await self._resumable.forget_finished(self._clock())
        for record in (expired := await self._resumable.expired(self._clock())):
            await self._files.abort_resumable(record.upload)
            await self._resumable.delete(record.id)
            log.info("resumable upload %s expired at %d of %d bytes", record.id,
                     record.offset, record.length)  # fmt: skip
        return len(expired)

    async def run(self, interval_seconds: float) -> None:
        """Sweep now and every `interval_seconds`; a failed pass is logged, not fatal."""
        while True:
            try:
                if self._turn is None or await self._turn():
                    report = await self.sweep()
                    if report != SweepReport(0, 0, 0, 0):
                        log.info(
                            "sweep removed %d expired session(s), the files of %d unknown "
                            "one(s), %d unfinished upload(s) and %d expired resumable one(s)",
                            report.expired_sessions,
                            report.orphan_paths,
                            report.stale_uploads,
                            report.expired_uploads,
                        )
            except Exception:
                log.exception("sweep failed; trying again in %s s", interval_seconds)
            # A cancel that landed in a Redis read may come out as the error logged above:
            # without this the app's shutdown would wait a whole interval for the sweep.
            raise_if_cancelling()
            await asyncio.sleep(interval_seconds)
