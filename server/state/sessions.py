"""The one door for session state changes: persist through the store, publish through the hub.

Every change goes store first, then hub, under a per-session lock, so the order of the
status events a subscriber sees is the order of the snapshots the store kept. The rules
that hold for every caller live here:
  * a terminal session (completed, failed, cancelled) never changes again;
  * progress never goes down within one run (one attempt) while it is processing;
  * `current_step` is a string in every status but `uploaded` and `pending` (API.md);
  * a terminal status publishes `status`, then exactly one terminal event, then nothing;
  * reaching a terminal status makes a waiting webhook `pending` in that same snapshot, so
    the end and the duty to announce it are stored together.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from protocol import PartialItem, PartialKind
from server.state.bodies import PartialData, StatusBody, status_body
from server.state.events import EventLog
from server.state.models import Session, SessionStatus, utcnow
from server.state.store import SessionStore, SnapshotRefused
from server.state.webhook_delivery import DeliveryState, WebhookDelivery
from server.storage.files import SessionFiles, StorageUnavailable

# The step a session shows when it reaches a status with no step of its own (API.md allows
# null only while uploaded or pending): e.g. a job that fails before its worker started.
STATUS_STEPS = {
    SessionStatus.PROCESSING: "Processing",
    SessionStatus.COMPLETED: "Completed",
    SessionStatus.FAILED: "Failed",
    SessionStatus.CANCELLED: "Cancelled",
}


log = logging.getLogger("server.state.sessions")


class Sessions:
    """Reads and changes sessions; every change is stored, then published."""

    def __init__(
        self,
        store: SessionStore,
        hub: EventLog,
        files: SessionFiles,
        queue_position: Callable[[str], Awaitable[int | None]],
    ) -> None:
        self._store = store
        self._hub = hub
        self._files = files
        self._queue_position = queue_position
        # Weak values: a session's lock lives only while someone holds or waits for it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The last status body served per session, as JSON, with the snapshot it was made of.
        self._bodies: dict[str, tuple[Session, bytes]] = {}
        self._webhook_due: Callable[[str], None] = lambda session_id: None

    @property
    def hub(self) -> EventLog:
        """The hub the changes are published on (for subscribers)."""
        return self._hub

    async def create(self, session: Session) -> Session:
        """Store a new session, already in its first real state, and publish its status."""
        async with self._lock(session.id):
            await self._store.add(session)
            await self._publish(session)
        return session

    async def get(self, session_id: str) -> Session:
        """The current snapshot; raises SessionNotFound."""
        return await self._store.get(session_id)

    async def list(
        self, status: SessionStatus | None = None, limit: int | None = None
    ) -> list[Session]:
        """Sessions newest first, optionally of one status, at most `limit`."""
        return await self._store.list(status=status, limit=limit)

    def on_webhook_due(self, due: Callable[[str], None]) -> None:
        """Have `due(session_id)` called whenever a session's webhook becomes pending."""
        self._webhook_due = due

    async def update(self, session_id: str, **changes: Any) -> Session:
        """Apply `changes` (Session fields), store the snapshot and publish it.

        A terminal session is returned unchanged and nothing is published, unless its
        end was stored but never published (the event log was unreachable then): that
        end is published now, so a caller trying an update again after a StoreUnavailable
        loses no terminal event. While the session stays `processing` in the same
        attempt, a lower `progress` keeps the higher one (a run taken over by another
        node starts again from 0). Reaching `completed` sets progress to 1.0; reaching
        any terminal status makes a waiting webhook pending (and tells `on_webhook_due`).
        A status past `pending` without a step gets its STATUS_STEPS one. Raises
        SessionNotFound.

        Trying again after a StoreUnavailable is safe: a stored change whose status
        event did not go out is stored and published again (a status event is a state,
        so a repeat tells a client nothing wrong), and an end is never published twice.
        """
        async with self._lock(session_id):
            current = await self._store.get(session_id)
            if current.status.is_terminal:
                if await self._announce_unpublished_end(current) and _webhook_pending(current):
                    self._webhook_due(session_id)
                return current
            status = changes.get("status", current.status)
            same_run = changes.get("attempts", current.attempts) == current.attempts
            if (
                "progress" in changes
                and current.status is SessionStatus.PROCESSING
                and status is SessionStatus.PROCESSING
                and same_run
            ):
                changes["progress"] = max(current.progress, changes["progress"])
            if status is SessionStatus.COMPLETED:
                changes["progress"] = 1.0
            if status in STATUS_STEPS and changes.get("current_step", current.current_step) is None:
                changes["current_step"] = STATUS_STEPS[status]
            webhook: WebhookDelivery | None = changes.get("webhook", current.webhook)
            due = False
            if (
                webhook is not None
                and status.is_terminal
                and webhook.state is DeliveryState.WAITING
            ):
                changes["webhook"] = webhook.replace(
                    state=DeliveryState.PENDING, pending_since=utcnow()
                )
                due = True
            session = current.replace(**changes)
            try:
                await self._store.put(session)
            except SnapshotRefused:
                # Another node ended the session meanwhile: its ending stands, unpublished here.
                return await self._store.get(session_id)
            await self._publish(session)
        if due:
            self._webhook_due(session_id)
        return session

    async def record_webhook(self, session_id: str, delivery: WebhookDelivery) -> Session:
        """Store how a session's webhook delivery stands; any status, terminal included.

        Not a change of the session: `updatedAt` stays (expiry counts from the session's
        end) and nothing is published (a terminal session's events are over); status
        polls show it. Raises SessionNotFound.
        """
        async with self._lock(session_id):
            current = await self._store.get(session_id)
            session = current.replace(webhook=delivery, updated_at=current.updated_at)
            await self._store.put(session)
            return session

    async def add_partial(self, session_id: str, kind: PartialKind, item: PartialItem) -> None:
        """Publish one partial result (an item of the results list `kind`) of a processing
        session; ignored for any other status."""
        async with self._lock(session_id):
            session = await self._store.get(session_id)
            if session.status is SessionStatus.PROCESSING:
                data = PartialData(session_id=session_id, kind=kind, item=item)
                await self._hub.publish(session_id, "partial", msgspec.to_builtins(data))

    async def publish_status(self, session_id: str) -> None:
        """Publish the current status again (its queue position changed); not once terminal."""
        async with self._lock(session_id):
            session = await self._store.get(session_id)
            if not session.status.is_terminal:
                await self._hub.publish(session_id, "status", await self.body(session))

    async def announce_all(self) -> None:
        """Publish the state of every stored session the hub knows nothing of.

        After a restart the hub starts empty; without this, a subscriber to a session
        loaded from the store would wait for a change that may never come.
        """
        for session in await self._store.list():
            async with self._lock(session.id):
                if await self._hub.last_event_id(session.id) is None:
                    await self._publish(session)

    async def delete(self, session_id: str) -> None:
        """Remove the session, its upload and every artifact; end its event streams.

        Raises SessionNotFound. Stopping a live job first is the caller's business.
        """
        async with self._lock(session_id):
            session = await self._store.get(session_id)
            await self._store.delete(session_id)
            await self._hub.forget(session_id)
            self._bodies.pop(session_id, None)
        try:
            await self._files.remove_session(session.upload_path, session.output_dir)
        except StorageUnavailable as exc:
            # The session is gone; its files now belong to no session, and the sweep
            # removes those once the store is back.
            log.warning("session %s: files left for the sweep (%s)", session_id, exc)

    async def status_of(self, session: Session) -> StatusBody:
        """The status body of API.md, with the session's current queue position."""
        position = (
            await self._queue_position(session.id)
            if session.status is SessionStatus.PENDING
            else None
        )
        return status_body(session, position)

    async def body(self, session: Session) -> dict[str, Any]:
        """`status_of(session)` as plain JSON data (what the event hub carries)."""
        return msgspec.to_builtins(await self.status_of(session))

    async def body_json(self, session: Session) -> bytes:
        """`body(session)` as JSON bytes, made once per snapshot.

        Status polls are most of the traffic and repeat the same answer until the session
        changes; snapshots are immutable, so the bytes stay right while the snapshot is
        the same object. A pending body is made every time: its queue position moves
        without a new snapshot.
        """
        if session.status is SessionStatus.PENDING:
            return msgspec.json.encode(await self.status_of(session))
        cached = self._bodies.get(session.id)
        if cached is not None and cached[0] is session:
            return cached[1]
        data = msgspec.json.encode(await self.status_of(session))
        self._bodies[session.id] = (session, data)
        return data

    async def _announce_unpublished_end(self, session: Session) -> bool:
        """Publish a terminal session's end if its event log lacks it; whether it did."""
        last = await self._hub.last_event_id(session.id)
        if await self._hub.is_finished(session.id, last):
            return False
        await self._publish(session)
        return True

    async def _publish(self, session: Session) -> None:
        body = await self.body(session)
        await self._hub.publish(session.id, "status", body)
        if session.status.is_terminal:
            await self._hub.publish(session.id, session.status.value, body)

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    def __repr__(self) -> str:
        return f"<Sessions store={self._store!r} hub={self._hub!r}>"


def _webhook_pending(session: Session) -> bool:
    return session.webhook is not None and session.webhook.state is DeliveryState.PENDING
