"""Where session snapshots are kept: the interface every store offers, and one in memory.

The interface is async and minimal so that a durable store (SQLite) can replace the
memory one without touching its callers. Stores hold snapshots only; they publish
nothing and enforce no state rules: `server.state.sessions.Sessions` does both.
"""

from __future__ import annotations

from typing import Protocol

from server.state.models import Session, SessionNotFound, SessionStatus


class SnapshotRefused(Exception):
    """`put` would change the status of a session that has ended (another writer ended it).

    Only a store shared by several processes raises it: in one process `Sessions` never
    writes over an ended session.
    """

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} has already ended")
        self.session_id = session_id


class SessionStore(Protocol):
    """Keeps the latest snapshot of every session, by id."""

    async def add(self, session: Session) -> None:
        """Store a new session; an id that is already stored is a ValueError."""

    async def get(self, session_id: str) -> Session:
        """The stored snapshot; raises SessionNotFound."""

    async def put(self, session: Session) -> None:
        """Replace the snapshot of a stored session; raises SessionNotFound if it is gone.

        A shared store raises SnapshotRefused rather than change an ended session's status.
        """

    async def delete(self, session_id: str) -> None:
        """Forget a session; an unknown id is not an error."""

    async def list(
        self, status: SessionStatus | None = None, limit: int | None = None
    ) -> list[Session]:
        """Sessions newest first (by `created_at`), optionally of one status, at most `limit`."""

    async def close(self) -> None:
        """Release what the store holds; safe to call twice."""


class MemoryStore:
    """A `SessionStore` in a dict: fast, and gone when the process ends."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    async def add(self, session: Session) -> None:
        if session.id in self._sessions:
            raise ValueError(f"session {session.id} is already stored")
        self._sessions[session.id] = session

    async def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    async def put(self, session: Session) -> None:
        # Never resurrect a deleted session: a late update of a running job must fail.
        if session.id not in self._sessions:
            raise SessionNotFound(session.id)
        self._sessions[session.id] = session

    async def delete(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def list(
        self, status: SessionStatus | None = None, limit: int | None = None
    ) -> list[Session]:
        found = [s for s in self._sessions.values() if status is None or s.status is status]
        found.sort(key=lambda s: s.created_at, reverse=True)
        return found if limit is None else found[: max(limit, 0)]

    async def close(self) -> None:
        """Nothing to release: the sessions simply go with the process."""

    def __len__(self) -> int:
        return len(self._sessions)

    def __repr__(self) -> str:
        return f"<MemoryStore sessions={len(self._sessions)}>"
