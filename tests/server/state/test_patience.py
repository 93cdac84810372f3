"""`outlast`: an operation tried again while the store is unavailable, within a bound."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from server.state.models import ServerBusy
from server.state.patience import PatienceExhausted, StoreUnavailable, outlast
from server.state.redis_connection import StateUnavailable
from tests.server.conftest import eventually


class Flaky:
    """An operation that fails with `error` on its first `failures` calls, then answers."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or StoreUnavailable()
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"done on call {self.calls}"


async def test_an_operation_goes_through_once_the_store_is_back():
    operation = Flaky(3)
    assert await outlast(operation, patience=30, what="test") == "done on call 4"
    assert operation.calls == 4


@pytest.mark.parametrize(
    "error",
    [StateUnavailable(), RedisConnectionError("Connection refused")],
    ids=["redis unavailable", "redis connection error"],
)
async def test_redis_outages_are_waited_out_too(error):
    operation = Flaky(2, error)
    assert await outlast(operation, patience=30, what="test") == "done on call 3"


async def test_an_outage_longer_than_the_patience_gives_up_with_the_last_error():
    operation = Flaky(failures=10**9)
    with pytest.raises(PatienceExhausted) as gave_up:
        await outlast(operation, patience=0.3, what="session x: progress")
    assert isinstance(gave_up.value.__cause__, StoreUnavailable)
    assert gave_up.value.seconds >= 0.3
    assert "session x: progress" in str(gave_up.value)
    assert operation.calls > 1, "it gave up without trying again"


async def test_an_error_that_is_no_outage_is_raised_at_once():
    operation = Flaky(1, ValueError("bad snapshot"))
    with pytest.raises(ValueError, match="bad snapshot"):
        await outlast(operation, patience=30, what="test")
    assert operation.calls == 1


async def test_without_a_bound_it_waits_until_its_owner_cancels_it():
    operation = Flaky(failures=10**9)
    waiting = asyncio.create_task(outlast(operation, patience=None, what="test"))
    assert await eventually(lambda: operation.calls >= 3), "it stopped trying"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    calls = operation.calls
    await asyncio.sleep(0.2)
    assert operation.calls == calls, "it went on trying after the cancel"


def test_an_unavailable_store_is_a_busy_server_for_clients():
    """At the HTTP edge the same noun is a 503 with Retry-After, for SQLite and Redis."""
    for error in (StoreUnavailable(), StateUnavailable()):
        assert isinstance(error, ServerBusy)
        assert error.retry_after_seconds >= 1
