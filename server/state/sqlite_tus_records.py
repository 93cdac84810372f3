"""`TusRecords` on one machine: a `tus_uploads` table in the SQLite file the sessions use.

Each row keeps the whole record as the codec's JSON, and beside it, as columns, what the
statements select on: the offset (the compare-and-set of `advance`), the length, the
expiry and the session id (which unfinished uploads are past due). Only this module
writes the rows, and it writes the JSON and its columns in one statement, so they agree.

The table shares the sessions' file (one file to back up, WAL already on) through a
connection of its own; writes of the two take turns at SQLite's write lock, each a short
transaction. As in `SqliteStore`, statements run on one thread of their own, and a
database locked by another process for longer than SQLite's busy wait raises
`StoreUnavailable`. One process owns the file, so the write lock of an upload is a name
held in this process's memory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from server.state.sqlite_thread import SqliteThread
from server.state.tus_codec import tus_record_from_json, tus_record_to_json, utc_text
from server.state.tus_records import TusRecord, UploadBusy
from server.storage.files import Resumable

T = TypeVar("T")

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS tus_uploads (
        id TEXT PRIMARY KEY,
        upload_offset INTEGER NOT NULL,
        upload_length INTEGER NOT NULL,
        expires_at TEXT NOT NULL,
        session_id TEXT,
        data TEXT NOT NULL
    )
    """,
    # Only uploads without a session can expire: the sweep reads a small index.
    """
    CREATE INDEX IF NOT EXISTS tus_uploads_unfinished
    ON tus_uploads (expires_at) WHERE session_id IS NULL
    """,
)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction taken at once (BEGIN IMMEDIATE), so what the block reads is
    still so when it writes; rolled back if the block fails."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class SqliteTusRecords:
    """The records of resumable uploads in a SQLite file; `open()` before use."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._thread = SqliteThread(self._path, "sqlite-tus")
        self._writing: set[str] = set()

    async def open(self) -> SqliteTusRecords:
        """Create or open the database and its table; returns self."""
        await self._thread.open(SCHEMA)
        return self

    async def close(self) -> None:
        """Close the connection behind every statement already asked for."""
        await self._thread.close()

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        return await self._thread.run(function, *args)

    @property
    def _connection(self) -> sqlite3.Connection:
        """The open database; only the records' thread uses it."""
        return self._thread.connection

    async def create(self, record: TusRecord) -> None:
        """Store a new record; ValueError if its id is stored already."""
        try:
            await self._run(self._insert, record)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"tus upload {record.id} is already stored") from exc

    def _insert(self, record: TusRecord) -> None:
        self._connection.execute(
            "INSERT INTO tus_uploads"
            " (id, upload_offset, upload_length, expires_at, session_id, data)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.offset,
                record.length,
                utc_text(record.expires_at),
                record.session_id,
                tus_record_to_json(record),
            ),
        )

    async def get(self, upload_id: str) -> TusRecord | None:
        text = await self._run(self._select, upload_id)
        return None if text is None else tus_record_from_json(text)

    def _select(self, upload_id: str) -> str | None:
        row = self._connection.execute(
            "SELECT data FROM tus_uploads WHERE id = ?", (upload_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    async def advance(self, upload_id: str, expected_offset: int, upload: Resumable) -> bool:
        return await self._run(self._advance, upload_id, expected_offset, upload)

    def _advance(self, upload_id: str, expected_offset: int, upload: Resumable) -> bool:
        db = self._connection
        with _transaction(db):
            row = db.execute(
                "SELECT data FROM tus_uploads WHERE id = ? AND upload_offset = ?",
                (upload_id, expected_offset),
            ).fetchone()
            if row is None:
                return False
            record = replace(tus_record_from_json(row[0]), upload=upload)
            changed = db.execute(
                "UPDATE tus_uploads SET upload_offset = ?, data = ?"
                " WHERE id = ? AND upload_offset = ?",
                (upload.offset, tus_record_to_json(record), upload_id, expected_offset),
            ).rowcount
        return changed == 1

    async def set_session(self, upload_id: str, session_id: str) -> None:
        """Note the session; a record deleted meanwhile stays deleted."""
        await self._run(self._set_session, upload_id, session_id)

    def _set_session(self, upload_id: str, session_id: str) -> None:
        db = self._connection
        with _transaction(db):
            row = db.execute("SELECT data FROM tus_uploads WHERE id = ?", (upload_id,)).fetchone()
            if row is None:
                return
            record = replace(tus_record_from_json(row[0]), session_id=session_id)
            db.execute(
                "UPDATE tus_uploads SET session_id = ?, data = ? WHERE id = ?",
                (session_id, tus_record_to_json(record), upload_id),
            )

    async def delete(self, upload_id: str) -> None:
        await self._run(self._delete, upload_id)

    def _delete(self, upload_id: str) -> None:
        self._connection.execute("DELETE FROM tus_uploads WHERE id = ?", (upload_id,))

    async def expired(self, now: datetime) -> list[TusRecord]:
        texts = await self._run(self._expired, utc_text(now))
        return [tus_record_from_json(text) for text in texts]

    def _expired(self, now: str) -> list[str]:
        rows = self._connection.execute(
            "SELECT data FROM tus_uploads WHERE session_id IS NULL"
            " AND upload_offset < upload_length AND expires_at < ?",
            (now,),
        )
        return [str(row[0]) for row in rows]

    async def forget_finished(self, now: datetime) -> int:
        return int(await self._run(self._forget_finished, utc_text(now)))

    def _forget_finished(self, now: str) -> int:
        cursor = self._connection.execute(
            "DELETE FROM tus_uploads WHERE session_id IS NOT NULL AND expires_at < ?", (now,)
        )
        return cursor.rowcount

    async def unfinished(self) -> set[str]:
        return set(await self._run(self._unfinished))

    def _unfinished(self) -> list[str]:
        rows = self._connection.execute("SELECT id FROM tus_uploads WHERE session_id IS NULL")
        return [str(row[0]) for row in rows]

    @asynccontextmanager
    async def writing(self, upload_id: str) -> AsyncIterator[None]:
        """Hold the upload's write lock (a name in this process) while the block runs."""
        if upload_id in self._writing:
            raise UploadBusy(upload_id)
        self._writing.add(upload_id)
        try:
            yield
        finally:
            self._writing.discard(upload_id)

    def __repr__(self) -> str:
        return f"<SqliteTusRecords {self._path.name} writing={len(self._writing)}>"
