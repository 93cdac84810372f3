"""The durable store: what was acknowledged survives a reopen and a kill -9 of the writer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from protocol import AnalysisType, VideoInfo, WorkerHighlightsResults
from server.app import STORE_FILE
from server.state.models import Session, SessionNotFound, SessionStatus, utcnow
from server.state.session_codec import session_from_json, session_to_json
from server.state.sqlite_store import SCHEMA, SqliteStore
from server.state.store import MemoryStore
from tests.protocol.test_results import HIGHLIGHTS
from tests.server.http_helpers import V1, start

REPO = str(Path(__file__).resolve().parents[3])


def make_session(**changes) -> Session:
    session = Session(
        id=str(uuid.uuid4()),
        status=SessionStatus.PENDING,
        video=VideoInfo("match.mp4", 12.0, 160, 120, 10.0, rotation=90, has_audio=True),
        upload_path="/data/uploads/x/source.mp4",
        output_dir="/data/artifacts/x",
        analysis_type=AnalysisType.HIGHLIGHTS,
        params={"min_significance": 4, "make_reel": True},
    )
    return session.replace(**changes) if changes else session


def test_every_field_round_trips_through_json():
    session = make_session(
        status=SessionStatus.COMPLETED,
        progress=1.0,
        current_step="Finished",
        results=msgspec.structs.replace(HIGHLIGHTS, video_description="ünïcödé"),
        attempts=2,
        error=None,
    )
    assert session_from_json(session_to_json(session)) == session


# A completed session's row as the code before typed results wrote it (session_to_json of
# then), and the GET /results body that code answered for it, byte for byte.
OLD_ROW = (
    '{"id":"0d6f1a52-3f0e-4c35-9a53-2b8f2f0d9c11","status":"completed","video":{"filename":"m'
    'atch.mp4","duration_seconds":12.0,"width":160,"height":120,"fps":10.0,"rotation":0,"has_'
    'audio":false},"upload_path":"/data/uploads/0d6f/source.mp4","output_dir":"/data/artifact'
    's/0d6f","analysis_type":"highlights","params":{"min_significance":4},"progress":1.0,"cur'
    'rent_step":"Completed","error":null,"results":{"analysisType":"highlights","processing_t'
    'ime_seconds":3.21,"model":"/models/SmolVLM2-local","video":{"filename":"match.mp4","dura'
    'tion_seconds":12.0,"width":160,"height":120,"fps":10.0},"video_description":"A football '
    'match.","criteria":["a goal is scored"],"timeline":[{"start":0.0,"end":6.0,"start_time":'
    '"00:00","end_time":"00:06","significance":8,"description":"A goal."},{"start":6.0,"end":'
    '12.0,"start_time":"00:06","end_time":"00:12","significance":null,"description":null}],"h'
    'ighlights_found":1,"highlights":[{"start":0.0,"end":6.0,"start_time":"00:00","end_time":'
    '"00:06","significance":8,"description":"A goal.","thumbnail":"thumbnails/000.jpg"}],"ree'
    'l":{"file":"reel.mp4","duration_seconds":6.0}},"attempts":1,"webhook":null,"created_at":'
    '"2025-09-30T10:30:00+00:00","updated_at":"2025-09-30T10:30:00+00:00"}'
)
OLD_RESULTS_BODY = (
    '{"sessionId":"0d6f1a52-3f0e-4c35-9a53-2b8f2f0d9c11","status":"completed","results":{"ana'
    'lysisType":"highlights","processing_time_seconds":3.21,"model":"SmolVLM2-local","video":'
    '{"filename":"match.mp4","duration_seconds":12.0,"width":160,"height":120,"fps":10.0},"vi'
    'deo_description":"A football match.","criteria":["a goal is scored"],"highlights_found":'
    '1,"highlights":[{"start":0.0,"end":6.0,"start_time":"00:00","end_time":"00:06","signific'
    'ance":8,"description":"A goal.","thumbnail":"/api/v1/video/results/0d6f1a52-3f0e-4c35-9a'
    '53-2b8f2f0d9c11/thumbnails/0"}],"reel":{"url":"/api/v1/video/results/0d6f1a52-3f0e-4c35-'
    '9a53-2b8f2f0d9c11/reel","duration_seconds":6.0},"timeline":[{"start":0.0,"end":6.0,"star'
    't_time":"00:00","end_time":"00:06","significance":8,"description":"A goal."},{"start":6.'
    '0,"end":12.0,"start_time":"00:06","end_time":"00:12","significance":null,"description":n'
    "ull}]}}"
)


def _old_row_now() -> str:
    """OLD_ROW with fresh timestamps, so that no expiry sweep takes it."""
    now = utcnow().isoformat()
    return OLD_ROW.replace("2025-09-30T10:30:00+00:00", now)


async def test_a_row_written_before_typed_results_loads_with_its_results_typed(tmp_path):
    path = tmp_path / "sessions.db"
    with sqlite3.connect(path) as db:
        db.execute(SCHEMA)
        db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
            ("0d6f1a52-3f0e-4c35-9a53-2b8f2f0d9c11", "completed", "t", "t", OLD_ROW),
        )
    store = await SqliteStore(path).open()
    try:
        assert store.unreadable_rows == 0
        session = await store.get("0d6f1a52-3f0e-4c35-9a53-2b8f2f0d9c11")
    finally:
        await store.close()
    assert isinstance(session.results, WorkerHighlightsResults)
    assert session.results.reel is not None and session.results.reel.file == "reel.mp4"
    # Written again, the row holds the same JSON as before.
    assert json.loads(session_to_json(session)) == json.loads(OLD_ROW)


async def test_the_results_body_of_an_old_row_is_the_one_answered_before(aiohttp_client, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / STORE_FILE) as db:
        db.execute(SCHEMA)
        db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
            ("0d6f1a52-3f0e-4c35-9a53-2b8f2f0d9c11", "completed", "t", "t", _old_row_now()),
        )
    client = await start(aiohttp_client, tmp_path)
    response = await client.get(f"{V1}/results/0d6f1a52-3f0e-4c35-9a53-2b8f2f0d9c11")
    assert response.status == 200
    assert await response.read() == OLD_RESULTS_BODY.encode()


async def test_sessions_survive_closing_and_reopening(tmp_path):
    store = await SqliteStore(tmp_path / "sessions.db").open()
    first, second = make_session(), make_session(status=SessionStatus.UPLOADED)
    await store.add(first)
    await store.add(second)
    await store.put(first.replace(status=SessionStatus.PROCESSING, progress=0.5))
    await store.delete(second.id)
    await store.close()

    reopened = await SqliteStore(tmp_path / "sessions.db").open()
    try:
        assert [s.id for s in await reopened.list()] == [first.id]
        restored = await reopened.get(first.id)
        assert restored.status is SessionStatus.PROCESSING and restored.progress == 0.5
        with pytest.raises(SessionNotFound):
            await reopened.get(second.id)
    finally:
        await reopened.close()


async def test_a_failed_write_leaves_the_memory_copy_as_stored(tmp_path):
    """Readers never see a change that the database did not commit."""
    store = await SqliteStore(tmp_path / "sessions.db").open()
    try:
        session = make_session()
        await store.add(session)
        await store._run(
            store._connection.execute, "DROP TABLE sessions"
        )  # every later write fails

        with pytest.raises(sqlite3.OperationalError):
            await store.put(session.replace(status=SessionStatus.PROCESSING))
        assert (await store.get(session.id)).status is SessionStatus.PENDING

        newcomer = make_session()
        with pytest.raises(sqlite3.OperationalError):
            await store.add(newcomer)
        with pytest.raises(SessionNotFound):
            await store.get(newcomer.id)
    finally:
        await store.close()


async def test_a_write_in_flight_when_the_store_closes_is_committed(tmp_path):
    """close() waits for the writes already asked for instead of pulling their connection."""
    store = await SqliteStore(tmp_path / "sessions.db").open()
    session = make_session()
    await store.add(session)
    gate = threading.Event()
    holding = asyncio.ensure_future(store._run(gate.wait))  # the store's one thread waits
    put = asyncio.ensure_future(store.put(session.replace(status=SessionStatus.PROCESSING)))
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)  # one turn of the loop: the put and the close queue behind it
    gate.set()
    await asyncio.gather(holding, put, closing)

    reopened = await SqliteStore(tmp_path / "sessions.db").open()
    try:
        assert (await reopened.get(session.id)).status is SessionStatus.PROCESSING
    finally:
        await reopened.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_store_rules_match_the_memory_store(tmp_path, kind):
    """Duplicate add is refused; put never resurrects a deleted session; delete is idempotent.

    The same steps run on both stores, so the rules are shown to be the same."""
    if kind == "memory":
        store = MemoryStore()
    else:
        store = await SqliteStore(tmp_path / "sessions.db").open()
    try:
        session = make_session()
        await store.add(session)
        with pytest.raises(ValueError):
            await store.add(session)
        await store.delete(session.id)
        await store.delete(session.id)
        with pytest.raises(SessionNotFound):
            await store.put(session)
    finally:
        await store.close()


async def test_list_is_newest_first_with_status_filter_and_limit(tmp_path):
    store = await SqliteStore(tmp_path / "sessions.db").open()
    try:
        now = utcnow()
        sessions = [
            make_session(created_at=now - timedelta(minutes=i), status=status)
            for i, status in enumerate([SessionStatus.PENDING, SessionStatus.FAILED] * 3)
        ]
        for session in reversed(sessions):
            await store.add(session)
        assert [s.id for s in await store.list()] == [s.id for s in sessions]
        failed = await store.list(SessionStatus.FAILED, limit=2)
        assert [s.id for s in failed] == [sessions[1].id, sessions[3].id]
    finally:
        await store.close()


async def test_an_unreadable_row_is_skipped_not_fatal_and_logged(tmp_path, caplog):
    store = await SqliteStore(tmp_path / "sessions.db").open()
    await store.add(make_session())
    await store.close()
    with sqlite3.connect(tmp_path / "sessions.db") as db:
        db.execute("INSERT INTO sessions VALUES ('bad', 'pending', 'x', 'x', '{\"id\": 1}')")
    reopened = await SqliteStore(tmp_path / "sessions.db").open()
    try:
        assert len(await reopened.list()) == 1 and reopened.unreadable_rows == 1
        assert "1 session row(s) this version cannot read" in caplog.text
    finally:
        await reopened.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from tests.server.state.test_sqlite_store import make_session
    from server.state.sqlite_store import SqliteStore

    async def main():
        store = await SqliteStore(sys.argv[1]).open()
        while True:
            session = make_session()
            await store.add(session)
            await store.put(session.replace(progress=0.5))
            print(session.id, flush=True)  # acknowledged: both writes have committed

    asyncio.run(main())
    """
)


def test_acknowledged_writes_survive_kill_9_of_the_writer(tmp_path):
    """Every session the writer reported as stored is there after SIGKILL, fully updated."""
    db = tmp_path / "sessions.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    acknowledged = [proc.stdout.readline().strip() for _ in range(200)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()

    async def reopen():
        store = await SqliteStore(db).open()
        try:
            return {s.id: s for s in await store.list()}
        finally:
            await store.close()

    stored = asyncio.run(reopen())
    for session_id in acknowledged:
        assert stored[session_id].progress == 0.5
