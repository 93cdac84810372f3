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

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from server.state.models import Session, SessionNotFound
from server.state.session_codec import session_from_json, session_to_json
from server.state.sqlite_thread import SqliteThread
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


class SqliteStore(MemoryStore):
    """Sessions in a SQLite file, loaded into memory when opened; reads never touch the disk."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        self.unreadable_rows = 0
        self._thread = SqliteThread(self._path, "sqlite-store")

    async def open(self) -> SqliteStore:
        """Create or open the database and load every session; returns self."""
        await self._thread.open([SCHEMA])
        rows = await self._run(self._rows)
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

    def _rows(self) -> list[str]:
        return [row[0] for row in self._connection.execute("SELECT data FROM sessions")]

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await self._thread.run(function, *args)

    @property
    def _connection(self) -> sqlite3.Connection:
        """The open database; only the store's thread uses it."""
        return self._thread.connection

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
        await self._thread.close()

    def __repr__(self) -> str:
        return f"<SqliteStore {self._path.name} sessions={len(self._sessions)}>"
