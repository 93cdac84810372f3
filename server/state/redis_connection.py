"""The connection of a node to the cluster's Redis, and the checks it makes before it runs.

A node refuses a Redis that could lose what it acknowledged: without append-only
persistence a restart of Redis forgets every session since the last snapshot, and with
an eviction policy other than `noeviction` Redis may drop queue or session keys under
memory pressure. Errors of the connection become `StateUnavailable`, the Redis kind of
`StoreUnavailable` (a 503 with Retry-After for the client, a wait for the runner), so a
short outage costs requests, not the node or its jobs.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.state.patience import StoreUnavailable

# Every key of the service starts with this, so one Redis can be shared with other things.
KEY_PREFIX = "smolvlm:"
# A request waits this long for Redis before it is answered 503; a node stays up.
SOCKET_TIMEOUT_SECONDS = 5.0
# Each pooled connection checks itself before use after this much idle time.
HEALTH_CHECK_SECONDS = 10
# Blocking reads (the job queue, event tails) hold one each; requests share the rest.
MAX_CONNECTIONS = 64

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class StateUnavailable(StoreUnavailable):
    """The shared state (Redis) cannot be reached just now; the client should retry."""

    def __init__(self) -> None:
        super().__init__("The session store is unreachable for a moment; try again shortly")


class UnsafeRedis(Exception):
    """Redis is configured so that it could lose acknowledged work; `str()` says what to set."""


# Renew a lease held under KEYS[1] by token ARGV[1] for ARGV[2] ms. One that lapsed while
# nobody took it (its holder stalled, Redis was away) is the holder's again; 0 if another
# holder has it now. Webhook delivery claims and resumable uploads' locks both renew so.
RENEW_LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

P = ParamSpec("P")
R = TypeVar("R")


def unavailable_as_busy(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn a lost Redis connection into `StateUnavailable` (503 + Retry-After)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except REDIS_ERRORS as exc:
            raise StateUnavailable() from exc

    return wrapper


def raise_if_cancelling() -> None:
    """Raise this task's pending cancellation, if a Redis call on the way swallowed it.

    redis-py may turn a cancel that lands during a read into a connection error, and
    asyncio.wait_for (3.10, 3.11) can drop one that lands as its wait ends; a loop that
    only catches errors would then run forever. Loops call this where they go round.
    Python 3.10 has no `Task.cancelling()`: there a swallowed cancel goes unseen.
    """
    if sys.version_info < (3, 11):
        return
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def connect(url: str) -> aioredis.Redis:
    """A pooled client for `url` that retries a dropped connection a few times.

    The pool blocks (up to the socket timeout) when all its connections are busy, so a
    burst of requests queues for a connection instead of failing.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        health_check_interval=HEALTH_CHECK_SECONDS,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT_SECONDS,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


async def check_durable(client: aioredis.Redis) -> None:
    """Raise UnsafeRedis unless Redis persists every write (AOF) and never evicts keys."""
    appendonly = (await client.config_get("appendonly")).get("appendonly")
    policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
    problems = []
    if appendonly != "yes":
        problems.append(f"appendonly is {appendonly!r}, needs 'yes'")
    if policy != "noeviction":
        problems.append(f"maxmemory-policy is {policy!r}, needs 'noeviction'")
    if problems:
        raise UnsafeRedis(
            "Redis could lose acknowledged sessions: "
            + "; ".join(problems)
            + " (set them in redis.conf or with CONFIG SET)"
        )


async def redis_problem(url: str) -> str | None:
    """Why a node cannot run on the Redis at `url` (one line), or None if it can."""
    client = connect(url)
    try:
        await check_durable(client)
    except UnsafeRedis as exc:
        return str(exc)
    except REDIS_ERRORS as exc:
        return f"cannot reach Redis at {url}: {exc}"
    finally:
        await client.aclose()
    return None


def cluster_turn(
    client: aioredis.Redis, name: str, node_id: str, seconds: float
) -> Callable[[], Awaitable[bool]]:
    """`turn()` for a periodic chore done once per cluster: True for one node per period.

    The first node to ask in a period takes a key that expires with the period, so if that
    node dies the next period has a taker again.
    """
    key = KEY_PREFIX + "turn:" + name

    async def turn() -> bool:
        try:
            return bool(await client.set(key, node_id, nx=True, px=int(seconds * 1000)))
        except REDIS_ERRORS:
            return False  # Redis is away: nobody sweeps a store they cannot read

    return turn
