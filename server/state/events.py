"""Fan-out of session events to live subscribers (server-sent event streams, waiters).

Each session has one ordered log of `ServerEvent`s. Ids start at 1 per session and only
increase, so every subscriber sees the same id for the same event and a reconnecting
client can resume after the last id it saw. Subscribers share the log: publishing appends
once and wakes every waiter through one `asyncio.Event` per session, so a thousand
subscribers cost a thousand waiting futures and nothing more.

Backlog rule (what a resume can replay). A session keeps at most `MAX_BACKLOG` events:
  * its terminal event and its latest `status` event are always kept (the latest status is
    held apart from the list, so it survives even when the list is trimmed);
  * when the list grows past the bound, the oldest *superseded* `status` event goes first:
    a status event is a full snapshot, so a newer one says everything an older one did;
  * only when no superseded status is left does the oldest event go (a `partial`, or the
    latest status, which is still held apart), and its id becomes the session's horizon.
A subscriber whose position is older than the horizon has missed events that cannot be
replayed: it gets the current status (if it has not seen it yet) and continues with the
oldest kept event. Anyone at or after the horizon misses nothing but superseded statuses.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

TERMINAL_EVENT_NAMES = frozenset({"completed", "failed", "cancelled"})
STATUS_EVENT_NAME = "status"
# A few hundred events cover every partial of a long video's run and keep a session's
# backlog in the tens of kilobytes; status events beyond this are superseded anyway.
MAX_BACKLOG = 500


@dataclass(frozen=True)
class ServerEvent:
    """One event of a session: `id` is its place in the session's log, `name` what it is
    (`status`, `partial`, or the terminal `completed`, `failed`, `cancelled`)."""

    id: int
    name: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        """Whether this is the session's last event (completed, failed or cancelled)."""
        return self.name in TERMINAL_EVENT_NAMES

    @functools.cached_property
    def data_json(self) -> bytes:
        """`data` as compact JSON, encoded once for all of the event's subscribers."""
        return json.dumps(self.data, separators=(",", ":"), allow_nan=False).encode()


class EventLog(Protocol):
    """Per-session ordered event logs: what `Sessions` publishes and SSE streams read.

    Ids start at 1 per session and only increase, the same for every reader. One in
    memory (`EventHub`) serves a single process; a shared one (Redis) serves many nodes.
    """

    async def publish(self, session_id: str, name: str, data: dict[str, Any]) -> ServerEvent | None:
        """Append an event and wake the session's subscribers; nothing follows a terminal event."""

    def subscribe(
        self, session_id: str, last_event_id: int | None = None
    ) -> AsyncGenerator[ServerEvent, None]:
        """The session's events for one subscriber: after `last_event_id`, else from its state."""

    async def last_event_id(self, session_id: str) -> int | None:
        """The id of the session's newest event, or None if it has none."""

    async def is_finished(self, session_id: str, last_event_id: int | None) -> bool:
        """True when `last_event_id` is the session's terminal event."""

    async def forget(self, session_id: str) -> None:
        """Drop a session's log; its subscribers get what was published, then stop."""

    async def close(self) -> None:
        """End every subscription promptly (server shutdown). Safe to call twice."""


@dataclass(eq=False)
class _Channel:
    """The log of one session and the event its subscribers wait on."""

    events: list[ServerEvent] = field(default_factory=list)
    next_id: int = 1
    latest_status: ServerEvent | None = None
    terminal: ServerEvent | None = None
    horizon: int = 0  # id of the newest event dropped that was not a superseded status
    forgotten: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        # A fresh Event per change: waiters hold the old one, which is set exactly once.
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def after(self, event_id: int) -> ServerEvent | None:
        """The oldest kept event with an id greater than `event_id`."""
        index = bisect.bisect_right(self.events, event_id, key=lambda event: event.id)
        return self.events[index] if index < len(self.events) else None

    def trim(self) -> None:
        if len(self.events) <= MAX_BACKLOG:
            return
        for index, event in enumerate(self.events):
            if event.name == STATUS_EVENT_NAME and event is not self.latest_status:
                del self.events[index]
                return
        self.horizon = self.events.pop(0).id


class EventHub:
    """An `EventLog` in memory: per-session logs with any number of live subscribers."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._closed = False

    async def publish(self, session_id: str, name: str, data: dict[str, Any]) -> ServerEvent:
        """Append an event to the session's log and wake its subscribers.

        Nothing follows a terminal event: publishing after one is a ValueError (the
        `Sessions` door never does it).
        """
        channel = self._channel(session_id)
        if channel.terminal is not None:
            raise ValueError(f"session {session_id} already ended with {channel.terminal.name}")
        event = ServerEvent(channel.next_id, name, data)
        channel.next_id += 1
        channel.events.append(event)
        if name == STATUS_EVENT_NAME:
            channel.latest_status = event
        elif event.is_terminal:
            channel.terminal = event
        channel.trim()
        channel.wake()
        return event

    def subscribe(
        self, session_id: str, last_event_id: int | None = None
    ) -> AsyncGenerator[ServerEvent, None]:
        """The session's events for one subscriber, from a starting point fixed right now.

        Without `last_event_id`: the current state first (the latest `status` event, or the
        terminal event alone if the session has ended), then live events. With an id: every
        kept event after it, then live events. An id this hub never issued (e.g. from
        before a restart) counts as no id. The iteration ends right after the terminal
        event, when the session is forgotten (after the events already published), or at
        once when the hub closes. Close it with `contextlib.aclosing` when stopping early.
        """
        channel = self._channel(session_id)
        newest = channel.next_id - 1
        if last_event_id is not None and 0 <= last_event_id <= newest:
            return self._follow(channel, (), last_event_id)
        current = channel.terminal or channel.latest_status
        if current is None:
            return self._follow(channel, (), newest)
        return self._follow(channel, (current,), current.id)

    async def last_event_id(self, session_id: str) -> int | None:
        """The id of the session's newest event, or None if it has none."""
        channel = self._channels.get(session_id)
        if channel is None or channel.next_id == 1:
            return None
        return channel.next_id - 1

    async def is_finished(self, session_id: str, last_event_id: int | None) -> bool:
        """True when `last_event_id` is the session's terminal event: nothing more will come."""
        channel = self._channels.get(session_id)
        return (
            channel is not None
            and channel.terminal is not None
            and channel.terminal.id == last_event_id
        )

    async def forget(self, session_id: str) -> None:
        """Drop a session's log; its subscribers get what was published, then stop."""
        channel = self._channels.pop(session_id, None)
        if channel is not None:
            channel.forgotten = True
            channel.wake()

    async def close(self) -> None:
        """End every subscription promptly (server shutdown). Safe to call twice."""
        self._closed = True
        for channel in self._channels.values():
            channel.wake()

    def _channel(self, session_id: str) -> _Channel:
        channel = self._channels.get(session_id)
        if channel is None:
            channel = self._channels[session_id] = _Channel()
        return channel

    async def _follow(
        self, channel: _Channel, first: tuple[ServerEvent, ...], cursor: int
    ) -> AsyncGenerator[ServerEvent, None]:
        if self._closed:
            return
        for current in first:
            yield current
            if current.is_terminal:
                return
        while not self._closed:
            changed = channel.changed  # taken before looking, so no wake-up is missed
            if cursor < channel.horizon:
                # Events after `cursor` were dropped: catch up on the state, skip the gap.
                status = channel.latest_status
                skipped_to, cursor = cursor, channel.horizon
                if status is not None and skipped_to < status.id <= channel.horizon:
                    yield status
                continue
            event = channel.after(cursor)
            if event is not None:
                yield event
                if event.is_terminal:
                    return
                cursor = event.id
                continue
            if channel.forgotten or channel.terminal is not None:
                return  # nothing more will come (a resume at the terminal event ends here)
            await changed.wait()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<EventHub sessions={len(self._channels)}{state}>"
