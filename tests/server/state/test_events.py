"""EventHub: one ordered log per session, shared ids, resumable, ended by a terminal event."""

import asyncio
import contextlib

import pytest

from server.state.events import MAX_BACKLOG, EventHub, ServerEvent

WAIT = 30.0  # only a bound against hangs


async def take(events, count: int) -> list[ServerEvent]:
    """The next `count` events of a subscription."""

    async def collect():
        return [await anext(events) for _ in range(count)]

    return await asyncio.wait_for(collect(), WAIT)


async def drain(events) -> list[ServerEvent]:
    """Every event until the subscription ends."""

    async def collect():
        return [event async for event in events]

    return await asyncio.wait_for(collect(), WAIT)


async def status(hub: EventHub, session_id: str, step: str) -> ServerEvent:
    return await hub.publish(session_id, "status", {"step": step})


@pytest.fixture
async def hub():
    hub = EventHub()
    yield hub
    await hub.close()


async def test_ids_start_at_one_per_session_and_increase(hub):
    assert [(await status(hub, "a", str(n))).id for n in range(3)] == [1, 2, 3]
    assert (await status(hub, "b", "x")).id == 1
    assert await hub.last_event_id("a") == 3
    assert await hub.last_event_id("b") == 1
    assert await hub.last_event_id("c") is None


async def test_every_subscriber_sees_the_same_events_with_the_same_ids(hub):
    await status(hub, "s", "queued")
    first, second = hub.subscribe("s"), hub.subscribe("s")
    await hub.publish("s", "partial", {"n": 1})
    await status(hub, "s", "running")
    await hub.publish("s", "completed", {"done": True})
    one, two = await drain(first), await drain(second)
    assert one == two
    assert [(e.id, e.name) for e in one] == [
        (1, "status"),
        (2, "partial"),
        (3, "status"),
        (4, "completed"),
    ]


async def test_a_new_subscriber_starts_from_the_latest_status_then_goes_live(hub):
    await status(hub, "s", "one")
    await hub.publish("s", "partial", {"n": 1})
    await status(hub, "s", "two")
    events = hub.subscribe("s")
    assert [e.data for e in await take(events, 1)] == [{"step": "two"}]
    await hub.publish("s", "partial", {"n": 2})
    assert [e.data for e in await take(events, 1)] == [{"n": 2}]
    await events.aclose()


async def test_subscribing_to_a_finished_session_yields_only_its_terminal_event(hub):
    await status(hub, "s", "running")
    await hub.publish("s", "status", {"step": "failed"})
    await hub.publish("s", "failed", {"error": "boom"})
    assert [e.name for e in await drain(hub.subscribe("s"))] == ["failed"]


async def test_resuming_replays_everything_after_the_id_without_loss_or_duplicates(hub):
    for n in range(5):
        await hub.publish("s", "partial", {"n": n})
    resumed = hub.subscribe("s", last_event_id=2)
    await hub.publish("s", "completed", {})
    assert [e.id for e in await drain(resumed)] == [3, 4, 5, 6]


async def test_a_subscription_ends_right_after_the_one_terminal_event(hub):
    events = hub.subscribe("s")
    await status(hub, "s", "running")
    await hub.publish("s", "cancelled", {})
    received = await drain(events)
    assert [e.name for e in received] == ["status", "cancelled"]
    with pytest.raises(ValueError):
        await status(hub, "s", "after the end")


async def test_is_finished_only_for_the_terminal_events_id(hub):
    await status(hub, "s", "running")
    assert not await hub.is_finished("s", 1)
    await hub.publish("s", "completed", {})
    assert await hub.is_finished("s", 2)
    assert not await hub.is_finished("s", 1)
    assert not await hub.is_finished("s", None)
    assert not await hub.is_finished("unknown", 1)


async def test_resuming_at_the_terminal_event_yields_nothing(hub):
    await status(hub, "s", "running")
    await hub.publish("s", "completed", {})
    assert await drain(hub.subscribe("s", last_event_id=2)) == []


async def test_an_id_the_hub_never_issued_counts_as_no_id(hub):
    """E.g. a Last-Event-ID from before a restart: start from the current state."""
    await status(hub, "s", "one")
    await status(hub, "s", "two")
    events = hub.subscribe("s", last_event_id=99)
    assert [e.id for e in await take(events, 1)] == [2]
    await events.aclose()


async def test_forget_ends_subscriptions_after_what_was_already_published(hub):
    events = hub.subscribe("s")
    await status(hub, "s", "running")
    await hub.forget("s")
    assert [e.name for e in await drain(events)] == ["status"]
    assert await hub.last_event_id("s") is None


async def test_close_ends_every_waiting_subscription(hub):
    await status(hub, "s", "running")
    waiting = [asyncio.ensure_future(drain(hub.subscribe(f"s{n % 3}"))) for n in range(30)]
    await asyncio.sleep(0)
    await hub.close()
    results = await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
    assert all(
        events in ([], [ServerEvent(1, "status", {"step": "running"})]) for events in results
    )
    assert await drain(hub.subscribe("s")) == []


async def test_a_thousand_subscribers_each_get_every_event_once(hub):
    await status(hub, "s", "queued")
    subscriptions = [hub.subscribe("s") for _ in range(1000)]
    readers = [asyncio.ensure_future(drain(events)) for events in subscriptions]
    await asyncio.sleep(0)
    for n in range(20):
        await hub.publish("s", "partial", {"n": n})
        if n % 5 == 0:
            await asyncio.sleep(0)  # let some readers fall behind, others keep up
    await hub.publish("s", "completed", {})
    results = await asyncio.wait_for(asyncio.gather(*readers), WAIT)
    expected = [1, *range(2, 22), 22]
    assert all([e.id for e in events] == expected for events in results)


async def test_the_backlog_drops_superseded_status_events_first(hub):
    for n in range(MAX_BACKLOG * 2):
        await status(hub, "s", str(n))
    partial = await hub.publish("s", "partial", {"n": 0})
    latest = await status(hub, "s", "latest")
    channel = hub._channels["s"]
    assert len(channel.events) == MAX_BACKLOG
    assert partial in channel.events and channel.events[-1] is latest
    assert channel.horizon == 0  # only superseded statuses went: nothing was lost


async def test_resuming_from_an_old_id_after_status_trimming_loses_nothing_but_old_statuses(hub):
    await hub.publish("s", "partial", {"n": "early"})
    for n in range(MAX_BACKLOG * 2):
        await status(hub, "s", str(n))
    await hub.publish("s", "completed", {})
    replay = await drain(hub.subscribe("s", last_event_id=0))
    assert replay[0].data == {"n": "early"}
    assert [e.name for e in replay[-2:]] == ["status", "completed"]
    assert replay[-2].data == {"step": str(MAX_BACKLOG * 2 - 1)}
    assert [e.id for e in replay] == sorted({e.id for e in replay})


async def test_a_resume_older_than_the_backlog_gets_the_current_status_then_continues(hub):
    """Once partials themselves were dropped, the gap is skipped, never replayed out of order."""
    first = await status(hub, "s", "current")
    partials = [await hub.publish("s", "partial", {"n": n}) for n in range(MAX_BACKLOG + 10)]
    channel = hub._channels["s"]
    assert channel.horizon > first.id  # the status and the oldest partials were dropped
    events = hub.subscribe("s", last_event_id=0)
    received = await take(events, 2)
    assert received[0] == first
    assert received[1].id == channel.horizon + 1 == channel.events[0].id
    await hub.publish("s", "completed", {})
    rest = await drain(events)
    ids = [e.id for e in received + rest]
    assert ids == sorted(set(ids))
    assert rest[-2] == partials[-1] and rest[-1].name == "completed"


async def test_a_lagging_subscriber_skips_dropped_events_in_order(hub):
    await status(hub, "s", "current")
    events = hub.subscribe("s")
    assert [e.id for e in await take(events, 1)] == [1]
    for n in range(MAX_BACKLOG + 10):
        await hub.publish("s", "partial", {"n": n})
    await hub.publish("s", "completed", {})
    rest = await drain(events)
    assert rest[0].id == hub._channels["s"].events[0].id
    assert rest[-1].name == "completed"
    assert [e.id for e in rest] == sorted({e.id for e in rest})


async def test_stopping_early_with_aclosing_leaves_the_hub_usable(hub):
    await status(hub, "s", "one")
    async with contextlib.aclosing(hub.subscribe("s")) as events:
        async for _event in events:
            break
    assert (await status(hub, "s", "two")).id == 2
