"""The periodic sweep: expired sessions go with their files, and so do files of no session.

A session expires SESSION_TTL_HOURS after its last update, unless it is live (pending or
processing): a long queue or a long job never loses its upload. After a crash, DATA_DIR
can hold folders no session owns (an upload cut off mid-stream, a session deleted while
its files were being removed); those go too, except the ones an upload is writing now.

On a cluster, one node sweeps per round (whoever takes the sweep lock), and an upload
another node is receiving is invisible here: a folder of no session goes only once
nothing in it has changed for `orphan_grace`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from server.state.models import SessionStatus, utcnow
from server.storage.paths import FileLocations
from server.state.sessions import Sessions

log = logging.getLogger("server.state.janitor")

LIVE = (SessionStatus.PENDING, SessionStatus.PROCESSING)


@dataclass(frozen=True)
class SweepReport:
    expired_sessions: int
    orphan_paths: int


class Janitor:
    """Removes expired sessions and orphan files; `run` repeats `sweep` until cancelled."""

    def __init__(
        self,
        sessions: Sessions,
        paths: FileLocations,
        ttl: timedelta,
        *,
        uploading: Callable[[str], bool],
        clock: Callable[[], datetime] = utcnow,
        orphan_grace: timedelta = timedelta(0),
        turn: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`turn()`, when given, says whether this process sweeps this round (a cluster lock)."""
        self._sessions = sessions
        self._paths = paths
        self._ttl = ttl
        self._uploading = uploading  # True for an id whose upload is being received now
        self._clock = clock
        self._orphan_grace = orphan_grace
        self._turn = turn

    async def sweep(self) -> SweepReport:
        """One pass over every session and every folder under DATA_DIR."""
        cutoff = self._clock() - self._ttl
        expired = 0
        for session in await self._sessions.list():
            if session.status not in LIVE and session.updated_at < cutoff:
                await self._sessions.delete(session.id)
                expired += 1
                log.info("session %s expired (last update %s)", session.id, session.updated_at)
        known = {session.id for session in await self._sessions.list()}
        orphans = 0
        for parent in (self._paths.uploads, self._paths.artifacts):
            for entry in parent.iterdir() if parent.is_dir() else ():
                if entry.name in known or self._uploading(entry.name):
                    continue
                if self._orphan_grace and not await asyncio.to_thread(
                    _untouched_since, entry, self._clock() - self._orphan_grace
                ):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    await asyncio.to_thread(shutil.rmtree, entry, True)
                else:
                    entry.unlink(missing_ok=True)
                orphans += 1
                log.info("removed orphan %s/%s", parent.name, entry.name)
        return SweepReport(expired, orphans)

    async def run(self, interval_seconds: float) -> None:
        """Sweep now and every `interval_seconds`; a failed pass is logged, not fatal."""
        while True:
            try:
                if self._turn is None or await self._turn():
                    report = await self.sweep()
                    if report.expired_sessions or report.orphan_paths:
                        log.info(
                            "sweep removed %d expired session(s) and %d orphan path(s)",
                            report.expired_sessions,
                            report.orphan_paths,
                        )
            except Exception:
                log.exception("sweep failed; trying again in %s s", interval_seconds)
            await asyncio.sleep(interval_seconds)


def _untouched_since(entry: Path, moment: datetime) -> bool:
    """Whether `entry` and whatever lies directly in it last changed before `moment`."""
    limit = moment.timestamp()
    try:
        paths = [entry, *(entry.iterdir() if entry.is_dir() and not entry.is_symlink() else ())]
        return all(path.lstat().st_mtime < limit for path in paths)
    except FileNotFoundError:
        return False  # going or gone already
