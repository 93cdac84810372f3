"""The one pub/sub listen loop of a node: subscribe, hand each message on, resubscribe on loss.

Pub/sub may lose messages while a connection is down; every listener here only makes
something prompt whose truth is elsewhere (the event Streams, the stored sessions), so a
lost subscription is logged and taken up again, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis

from server.state.redis_connection import REDIS_ERRORS, raise_if_cancelling

# How long one read waits for a message: bounds how late the loop sees that it should stop.
MESSAGE_WAIT_SECONDS = 1.0
# After a lost subscription, try again this often.
RESUBSCRIBE_SECONDS = 0.5


async def listen(
    client: aioredis.Redis,
    channels: Sequence[str],
    handle: Callable[[str, str], Awaitable[None]],
    *,
    is_open: Callable[[], bool],
    on_lost: Callable[[], None],
) -> None:
    """Call `handle(channel, data)` for each message on `channels` until `is_open()` is False.

    `on_lost()` is called each time the subscription is lost, before it is taken up again.
    The loop also checks `is_open` where it goes round: on Python 3.11 a cancel that lands
    inside a Redis call's own timeout can be uncancelled away, and then only the flag ends it.
    """
    while is_open():
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*channels)
            while is_open():
                raise_if_cancelling()
                message = await pubsub.get_message(timeout=MESSAGE_WAIT_SECONDS)
                if message is not None:
                    await handle(message["channel"], message["data"])
        except REDIS_ERRORS:
            raise_if_cancelling()
            on_lost()
            await asyncio.sleep(RESUBSCRIBE_SECONDS)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()
