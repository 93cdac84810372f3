"""Noticing that a client went away while a handler waits for something else.

aiohttp does not cancel a handler when its client disconnects (that would interrupt a
cancel or a cleanup half-way), so a handler that waits long - the synchronous analyze
endpoints, an event stream - checks the connection itself between short waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

T = TypeVar("T")


class ClientGone(ConnectionResetError):
    """The client closed the connection before its answer was ready."""


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def unless_client_leaves(
    request: web.Request, awaitable: Awaitable[T], poll_seconds: float
) -> T:
    """The result of `awaitable`, or ClientGone once the client disconnects first.

    The wait runs as a task of this handler, checked every `poll_seconds` and always
    cancelled and awaited before returning: nothing outlives the request.
    """
    waiting = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=poll_seconds)
            if done:
                return waiting.result()
            if client_gone(request):
                raise ClientGone("the client disconnected")
    finally:
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
