"""The events stream of a session: server-sent events over aiohttp-sse.

Each hub event goes out as `id:`, `event:` and one JSON `data:` line (`sse_frame`, around
the JSON the event encoded once for all its subscribers); aiohttp-sse sets up the response
and adds the comment pings that keep idle connections (and proxies) alive. The stream ends after
the terminal event, when the hub closes (server shutdown), or when the client leaves.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from server.state.events import EventLog, ServerEvent
from server.web.disconnect import unless_client_leaves
from server.web.responses import ApiError

LAST_EVENT_ID_HEADER = "Last-Event-ID"
# EventSource cannot set headers on its first connection; a page may pass the id here.
LAST_EVENT_ID_QUERY = "lastEventId"
# An event id the server takes: up to 18 digits (any int64), spaces around ignored.
EVENT_ID_PATTERN = "^ *[0-9]{1,18} *$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)


def last_event_id(request: web.Request) -> int | None:
    """The id the client has already seen (header first, then query), or None.

    A blank header counts as none; the query, like every query parameter, is given once
    and never empty (the route table checks that).
    """
    header = request.headers.get(LAST_EVENT_ID_HEADER, "")
    if header.strip():
        return _event_id(header, LAST_EVENT_ID_HEADER)
    query = request.query.get(LAST_EVENT_ID_QUERY)
    return None if query is None else _event_id(query, LAST_EVENT_ID_QUERY)


def _event_id(raw: str, name: str) -> int:
    if not _EVENT_ID.fullmatch(raw):
        raise ApiError(
            400,
            "Bad request",
            f"{name} must be an event id: the Last-Event-ID of the last event seen, "
            "a whole number from 0 (up to 18 digits)",
        )
    return int(raw)


async def stream_events(
    request: web.Request,
    hub: EventLog,
    session_id: str,
    *,
    ping_seconds: float,
    poll_seconds: float,
) -> web.StreamResponse:
    """Answer an events request: 204 if the client already has the terminal event, else stream."""
    after = last_event_id(request)
    if after is not None and await hub.is_finished(session_id, after):
        # 204 is what makes a browser's EventSource stop reconnecting.
        return web.Response(status=204)
    async with contextlib.aclosing(hub.subscribe(session_id, after)) as events:
        async with sse_response(request, ping_interval=ping_seconds) as stream:
            with contextlib.suppress(ConnectionResetError):
                await unless_client_leaves(request, _forward(events, stream), poll_seconds)
    return stream


def sse_frame(event: ServerEvent) -> bytes:
    """The event as one server-sent-events frame: its id, its name and its data as JSON."""
    return b"id: %d\r\nevent: %b\r\ndata: %b\r\n\r\n" % (
        event.id,
        event.name.encode(),
        event.data_json,
    )


async def _forward(events: AsyncIterator[ServerEvent], stream: EventSourceResponse) -> None:
    # Each event's JSON is encoded once and only framed per subscriber (a bytes format, well
    # under a microsecond), written as is: with 1,000 subscribers, EventSourceResponse.send's
    # per-call framing and JSON doubled the delivery delay. A subscriber that stops reading
    # is still cut off by the TCP user timeout aiohttp-sse sets on the socket.
    async for event in events:
        await stream.write(sse_frame(event))
