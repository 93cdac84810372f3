"""Sessions: every change is stored then published, terminal is final, progress only rises."""

import asyncio
import json
from datetime import timedelta

import msgspec
import pytest

from protocol import PartialKind, TimelineEntry
from server.state.models import SessionNotFound, SessionStatus, utcnow
from tests.server.conftest import new_session

WAIT = 30.0  # only a bound against hangs


async def published(sessions, session_id):
    """Every event the session has published so far (replayed from the start)."""
    hub = sessions.hub
    last = await hub.last_event_id(session_id)
    events = hub.subscribe(session_id, last_event_id=0)
    return [await asyncio.wait_for(anext(events), WAIT) for _ in range(last or 0)]


async def test_create_stores_the_session_and_publishes_its_status(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths))
    assert await sessions.get(session.id) == session
    events = await published(sessions, session.id)
    assert [(e.id, e.name, e.data["status"]) for e in events] == [(1, "status", "uploaded")]
    assert events[0].data == (await sessions.body(session))


async def test_update_stores_and_publishes_the_new_status_body(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths))
    updated = await sessions.update(
        session.id, status=SessionStatus.PROCESSING, current_step="Working"
    )
    assert await sessions.get(session.id) == updated
    events = await published(sessions, session.id)
    assert events[-1].name == "status"
    assert events[-1].data["status"] == "processing"
    assert events[-1].data["currentStep"] == "Working"


async def test_a_terminal_update_publishes_status_then_exactly_one_terminal_event(
    make_sessions, data_paths
):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    await sessions.update(session.id, status=SessionStatus.FAILED, error="boom")
    events = await published(sessions, session.id)
    assert [e.name for e in events] == ["status", "status", "failed"]
    assert events[-1].data == events[-2].data
    assert events[-1].data["error"] == "boom"


async def test_a_terminal_session_never_changes_again(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    cancelled = await sessions.update(session.id, status=SessionStatus.CANCELLED)
    count = await sessions.hub.last_event_id(session.id)
    again = await sessions.update(session.id, status=SessionStatus.COMPLETED, results={})
    await sessions.add_partial(session.id, PartialKind.HIGHLIGHTS, {"late": True})
    await sessions.publish_status(session.id)
    assert again == cancelled == await sessions.get(session.id)
    assert await sessions.hub.last_event_id(session.id) == count  # nothing published after the end


async def test_progress_never_goes_down_while_processing(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    await sessions.update(session.id, progress=0.6, current_step="Segment 6/10")
    lowered = await sessions.update(session.id, progress=0.2, current_step="Segment 2/10")
    assert lowered.progress == 0.6
    assert lowered.current_step == "Segment 2/10"


async def test_a_new_run_may_start_progress_from_zero(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(
        new_session(data_paths, status=SessionStatus.PROCESSING, progress=0.7)
    )
    restarted = await sessions.update(session.id, status=SessionStatus.PENDING, progress=0.0)
    assert restarted.progress == 0.0


async def test_completing_sets_progress_to_one(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    completed = await sessions.update(session.id, status=SessionStatus.COMPLETED, results={})
    assert completed.progress == 1.0


async def test_concurrent_updates_keep_the_highest_progress(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    values = [n / 100 for n in range(100)]
    await asyncio.gather(*(sessions.update(session.id, progress=v) for v in reversed(values)))
    assert (await sessions.get(session.id)).progress == max(values)
    progress = [e.data["progress"] for e in await published(sessions, session.id)]
    assert progress == sorted(progress)  # published in the order they were stored


async def test_partials_are_published_while_processing_only(make_sessions, data_paths):
    sessions = make_sessions()
    waiting = await sessions.create(new_session(data_paths, status=SessionStatus.PENDING))
    running = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    judged = TimelineEntry(
        start=0.0, end=5.0, start_time="00:00", end_time="00:05", significance=3, description="A"
    )
    await sessions.add_partial(waiting.id, PartialKind.TIMELINE, judged)
    await sessions.add_partial(running.id, PartialKind.TIMELINE, judged)
    assert [e.name for e in await published(sessions, waiting.id)] == ["status"]
    events = await published(sessions, running.id)
    assert events[-1].name == "partial"
    assert events[-1].data == {
        "sessionId": running.id,
        "kind": "timeline",
        "item": msgspec.to_builtins(judged),
    }


async def test_the_body_carries_the_queue_position_while_pending(make_sessions, data_paths):
    sessions = make_sessions(queue_position=lambda _id: 3)
    pending = await sessions.create(new_session(data_paths, status=SessionStatus.PENDING))
    uploaded = await sessions.create(new_session(data_paths))
    assert (await sessions.body(pending))["queuePosition"] == 3
    assert (await sessions.body(uploaded))["queuePosition"] is None


async def test_publish_status_republishes_the_current_body(make_sessions, data_paths):
    positions: dict[str, int] = {}
    sessions = make_sessions(queue_position=lambda session_id: positions.get(session_id))
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PENDING))
    positions[session.id] = 2
    await sessions.publish_status(session.id)
    positions[session.id] = 1
    await sessions.publish_status(session.id)
    events = await published(sessions, session.id)
    assert [e.data["queuePosition"] for e in events] == [None, 2, 1]


async def test_delete_removes_the_session_its_files_and_its_streams(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths))
    output = data_paths.output_dir(session.id)
    output.mkdir(parents=True)
    (output / "reel.mp4").write_bytes(b"reel")
    events = sessions.hub.subscribe(session.id)
    await sessions.delete(session.id)
    with pytest.raises(SessionNotFound):
        await sessions.get(session.id)
    assert not data_paths.upload_dir(session.id).exists()
    assert not output.exists()
    assert [e.name async for e in events] == ["status"]
    with pytest.raises(SessionNotFound):
        await sessions.update(session.id, progress=0.5)
    with pytest.raises(SessionNotFound):
        await sessions.delete(session.id)


async def test_list_is_newest_first_and_filtered(make_sessions, data_paths):
    sessions = make_sessions()
    earlier = utcnow() - timedelta(minutes=1)
    first = await sessions.create(new_session(data_paths, created_at=earlier))
    second = await sessions.create(new_session(data_paths, status=SessionStatus.PENDING))
    assert [s.id for s in await sessions.list()] == [second.id, first.id]
    assert [s.id for s in await sessions.list(status=SessionStatus.PENDING)] == [second.id]
    assert len(await sessions.list(limit=1)) == 1


async def test_body_json_is_made_once_per_snapshot_and_follows_every_change(
    make_sessions, data_paths
):
    """Polls reuse the bytes of an unchanged snapshot; any change gives a fresh body."""
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PROCESSING))
    first = await sessions.body_json(session)
    assert (await sessions.body_json(await sessions.get(session.id))) is first
    assert json.loads(first) == (await sessions.body(session))

    changed = await sessions.update(session.id, progress=0.5, current_step="Halfway")
    body = json.loads(await sessions.body_json(changed))
    assert body["progress"] == 0.5 and body["currentStep"] == "Halfway"


async def test_a_pending_body_always_carries_the_current_queue_position(make_sessions, data_paths):
    positions = {"place": 3}
    sessions = make_sessions(queue_position=lambda _id: positions["place"])
    session = await sessions.create(new_session(data_paths, status=SessionStatus.PENDING))

    assert json.loads(await sessions.body_json(session))["queuePosition"] == 3
    positions["place"] = 1  # the queue moved; the snapshot did not
    assert json.loads(await sessions.body_json(session))["queuePosition"] == 1


@pytest.mark.parametrize(
    ("status", "step"),
    [
        (SessionStatus.PROCESSING, "Processing"),
        (SessionStatus.COMPLETED, "Completed"),
        (SessionStatus.FAILED, "Failed"),
        (SessionStatus.CANCELLED, "Cancelled"),
    ],
)
async def test_a_status_past_pending_always_has_a_step(make_sessions, data_paths, status, step):
    """API.md: currentStep may be null only while uploaded or pending."""
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths))
    pending = await sessions.update(session.id, status=SessionStatus.PENDING)
    assert pending.current_step is None
    changed = await sessions.update(session.id, status=status)
    assert changed.current_step == step
    assert (await published(sessions, session.id))[-1].data["currentStep"] == step


async def test_a_step_given_with_the_status_is_kept(make_sessions, data_paths):
    sessions = make_sessions()
    session = await sessions.create(new_session(data_paths))
    failed = await sessions.update(session.id, status=SessionStatus.FAILED, current_step="Oops")
    assert failed.current_step == "Oops"
