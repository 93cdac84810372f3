"""One SQLite connection on a thread of its own, as the session store and the resumable
uploads' records each keep one to the same DATA_DIR database.

SQLite connections belong to the thread that made them, and one writer thread keeps
commits in order; closing runs on that thread too, behind every statement already asked
for, so a write in flight when the owner closes commits instead of finding no connection.
WAL with synchronous=NORMAL is safe against the process dying at any moment. A lock that
another connection holds past SQLite's own busy wait is `StoreUnavailable` (a wait for
the runner, a 503 for a request), never an error.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from server.state.patience import StoreUnavailable

T = TypeVar("T")


def held_by_another(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED ("database is locked", "database table is locked"):
    another connection holds the lock, and the same statement may go through later."""
    text = str(exc)
    return "locked" in text or "busy" in text


class SqliteThread:
    """A connection to the SQLite file at `path`, every use of it on one thread."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    async def open(self, schema: Sequence[str]) -> None:
        """Create or open the file in WAL mode and run the `schema` statements."""
        await self.run(self._open, schema)

    def _open(self, schema: Sequence[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            db.execute(statement)
        self._db = db

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on the connection's thread."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        except sqlite3.OperationalError as exc:
            if held_by_another(exc):
                raise StoreUnavailable() from exc
            raise

    @property
    def connection(self) -> sqlite3.Connection:
        """The open database; only for functions that `run` runs."""
        if self._db is None:
            raise RuntimeError(f"{self.path.name} is not open")
        return self._db

    async def close(self) -> None:
        """Close the connection behind every statement already asked for."""
        if self._db is not None:
            await self.run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
