"""A durable `SessionStore`: SQLite in WAL mode under DATA_DIR, with every session cached in memory.

Reads (status polls, lists) are served from memory, so they cost a dict lookup. Writes go
to SQLite through one background thread, in order, and each `add`/`put`/`delete` returns
only once its transaction has committed: a session the server has acknowledged survives a
`kill -9` of the server. WAL with synchronous=NORMAL is safe against the process dying at
any moment (only a power cut can lose the last commits), and does not fsync every update.
A write that finds the database locked by another process for longer than SQLite's own
busy wait raises `StoreUnavailable`, like an unreachable Redis: a wait for the runner,
a 503 for a request, never a lost session.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from server.state.models import Session, SessionNotFound
from server.state.patience import StoreUnavailable
from server.state.session_codec import session_from_json, session_to_json
from server.state.store import MemoryStore

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL
)
"""


def _held_by_another(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED ("database is locked", "database table is locked"):
    another connection holds the lock, and the same statement may go through later."""
    text = str(exc)
    return "locked" in text or "busy" in text


async def run_on(executor: Executor, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` on a connection's own thread; a lock another connection holds
    past SQLite's busy wait is StoreUnavailable (a wait, or a 503), not an error."""
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
    except sqlite3.OperationalError as exc:
        if _held_by_another(exc):
            raise StoreUnavailable() from exc
        raise


class SqliteStore(MemoryStore):
    """Sessions in a SQLite file, loaded into memory when opened; reads never touch the disk."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        self.unreadable_rows = 0
        # One thread: SQLite connections are per thread, and one writer keeps commits in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> SqliteStore:
        """Create or open the database and load every session; returns self."""
        rows = await self._run(self._open)
        skipped = 0
        for text in rows:
            try:
                session = session_from_json(text)
            except (KeyError, TypeError, ValueError):
                skipped += 1  # a row this version cannot read is left in place, not lost
                continue
            self._sessions[session.id] = session
        self.unreadable_rows = skipped
        if skipped:
            log.warning(
                "%s: %d session row(s) this version cannot read were left in place", self, skipped
            )
        return self

    def _open(self) -> list[str]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(SCHEMA)
        self._db = db
        return [row[0] for row in db.execute("SELECT data FROM sessions")]

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await run_on(self._executor, function, *args)

    @property
    def _connection(self) -> sqlite3.Connection:
        """The open database; only the store's thread uses it."""
        if self._db is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._db

    def _write(self, session: Session) -> None:
        self._connection.execute(
            "INSERT INTO sessions (id, status, created_at, updated_at, data) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET status = excluded.status,"
            " updated_at = excluded.updated_at, data = excluded.data",
            (
                session.id,
                session.status.value,
                session.created_at.isoformat(),
                session.updated_at.isoformat(),
                session_to_json(session),
            ),
        )

    def _remove(self, session_id: str) -> None:
        self._connection.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    # The commit comes first and the memory copy follows it, so a failed write (disk full,
    # I/O error) leaves readers seeing what is really stored. The single-thread executor keeps
    # a concurrent delete's removal behind this write, so the row cannot come back.
    async def add(self, session: Session) -> None:
        if session.id in self._sessions:
            raise ValueError(f"session {session.id} is already stored")
        await self._run(self._write, session)
        await super().add(session)

    async def put(self, session: Session) -> None:
        if session.id not in self._sessions:
            raise SessionNotFound(session.id)
        await self._run(self._write, session)
        await super().put(session)

    async def delete(self, session_id: str) -> None:
        stored = session_id in self._sessions
        await super().delete(session_id)
        if stored:
            await self._run(self._remove, session_id)

    # The connection closes on the store's thread, behind every write already asked for:
    # a write in flight when the store closes commits instead of finding no connection.
    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def __repr__(self) -> str:
        return f"<SqliteStore {self._path.name} sessions={len(self._sessions)}>"
