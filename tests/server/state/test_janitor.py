"""Expiry: old sessions go with their files; live sessions and uploads in progress never do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import pytest

from server.state.janitor import Janitor, SweepReport
from server.state.models import SessionNotFound, SessionStatus, utcnow
from server.storage.local import LocalFiles
from tests.server.conftest import eventually, new_session

TTL = timedelta(hours=24)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def add(sessions, paths, status: SessionStatus, *, age: timedelta, clock: Clock):
    session = new_session(paths, status=status)
    session = session.replace(updated_at=clock.now - age)
    paths.output_dir(session.id).mkdir(parents=True)
    (paths.output_dir(session.id) / "reel.mp4").write_bytes(b"x")
    return await sessions.create(session)


async def test_sessions_expire_a_ttl_after_their_last_update_with_their_files(
    make_sessions, data_paths, clock
):
    sessions = make_sessions()
    janitor = Janitor(
        sessions, LocalFiles(data_paths), TTL, uploading=lambda _id: False, clock=clock
    )
    old = await add(
        sessions, data_paths, SessionStatus.COMPLETED, age=TTL + timedelta(1), clock=clock
    )
    young = await add(sessions, data_paths, SessionStatus.FAILED, age=TTL / 2, clock=clock)

    report = await janitor.sweep()

    assert report.expired_sessions == 1 and report.orphan_paths == 0
    with pytest.raises(SessionNotFound):
        await sessions.get(old.id)
    assert not data_paths.upload_dir(old.id).exists()
    assert not data_paths.output_dir(old.id).exists()
    assert (await sessions.get(young.id)).status is SessionStatus.FAILED
    assert (data_paths.output_dir(young.id) / "reel.mp4").exists()

    clock.now += TTL  # now the young one is old too
    assert (await janitor.sweep()).expired_sessions == 1
    assert await sessions.list() == []


@pytest.mark.parametrize("status", [SessionStatus.PENDING, SessionStatus.PROCESSING])
async def test_live_sessions_never_expire_nor_lose_files(make_sessions, data_paths, clock, status):
    sessions = make_sessions()
    janitor = Janitor(
        sessions, LocalFiles(data_paths), TTL, uploading=lambda _id: False, clock=clock
    )
    live = await add(sessions, data_paths, status, age=TTL * 10, clock=clock)

    assert await janitor.sweep() == SweepReport(expired_sessions=0, orphan_paths=0)
    assert (await sessions.get(live.id)).status is status
    assert (data_paths.output_dir(live.id) / "reel.mp4").exists()
    assert any(data_paths.upload_dir(live.id).iterdir())


async def test_files_of_no_session_are_swept_but_not_an_upload_in_progress(
    make_sessions, data_paths, clock
):
    sessions = make_sessions()
    kept = await add(sessions, data_paths, SessionStatus.COMPLETED, age=timedelta(0), clock=clock)
    orphan_upload = data_paths.upload_dir("0f0e0d0c-0000-4000-8000-000000000000")
    orphan_upload.mkdir()
    (orphan_upload / "source.mp4").write_bytes(b"half an upload")
    orphan_artifacts = data_paths.output_dir("1f0e0d0c-0000-4000-8000-000000000000")
    (orphan_artifacts / "thumbnails").mkdir(parents=True)
    stray_file = data_paths.uploads / "stray.tmp"
    stray_file.write_bytes(b"")
    receiving = data_paths.upload_dir("2f0e0d0c-0000-4000-8000-000000000000")
    receiving.mkdir()
    janitor = Janitor(
        sessions,
        LocalFiles(data_paths),
        TTL,
        uploading=lambda sid: sid == receiving.name,
        clock=clock,
    )

    report = await janitor.sweep()

    assert report == SweepReport(expired_sessions=0, orphan_paths=3)
    assert not orphan_upload.exists() and not orphan_artifacts.exists() and not stray_file.exists()
    assert receiving.exists()
    assert data_paths.upload_dir(kept.id).exists() and data_paths.output_dir(kept.id).exists()


class ListedThen(LocalFiles):
    """LocalFiles whose listing of the store is followed, before the sweep goes on, by
    `meanwhile()`: what another request does while the sweep runs."""

    def __init__(self, paths, meanwhile) -> None:
        super().__init__(paths)
        self._meanwhile = meanwhile

    async def holders(self):
        found = await super().holders()
        await self._meanwhile()
        return found


async def test_an_upload_that_becomes_a_session_while_the_sweep_runs_keeps_its_files(
    make_sessions, data_paths, clock
):
    sessions = make_sessions()
    session = new_session(data_paths)  # its upload is on disk; the session not yet stored
    receiving = {session.id}

    async def upload_becomes_a_session():  # as UploadFlow: stored, then its slot let go
        await sessions.create(session)
        receiving.discard(session.id)

    janitor = Janitor(
        sessions,
        ListedThen(data_paths, upload_becomes_a_session),
        TTL,
        uploading=receiving.__contains__,
        clock=clock,
    )

    assert await janitor.sweep() == SweepReport(expired_sessions=0, orphan_paths=0)
    assert (data_paths.upload_dir(session.id) / "video.mp4").exists()


async def test_each_pass_of_run_logs_what_it_removed(make_sessions, data_paths, clock, caplog):
    caplog.set_level(logging.INFO, logger="server.state.janitor")
    sessions = make_sessions()
    janitor = Janitor(
        sessions, LocalFiles(data_paths), TTL, uploading=lambda _id: False, clock=clock
    )
    await add(sessions, data_paths, SessionStatus.COMPLETED, age=TTL * 2, clock=clock)
    (data_paths.uploads / "stray").mkdir(parents=True)

    task = asyncio.create_task(janitor.run(interval_seconds=3600))
    try:
        assert await eventually(lambda: "sweep removed" in caplog.text)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert (
        "sweep removed 1 expired session(s), the files of 1 unknown one(s), 0 unfinished "
        "upload(s) and 0 expired resumable one(s)" in caplog.text
    )


class CancelAsError(LocalFiles):
    """LocalFiles whose listing waits, and turns a cancel into a connection error, as
    redis-py may do with a cancel that lands during a read."""

    def __init__(self, paths) -> None:
        super().__init__(paths)
        self.listing = asyncio.Event()

    async def holders(self):
        self.listing.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("Connection closed by server.") from None
        return {}


async def test_run_ends_on_cancel_even_when_a_sweep_turns_it_into_an_error(
    make_sessions, data_paths, clock
):
    files = CancelAsError(data_paths)
    janitor = Janitor(make_sessions(), files, TTL, uploading=lambda _id: False, clock=clock)
    task = asyncio.create_task(janitor.run(interval_seconds=3600))
    await files.listing.wait()

    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)

    assert done == {task} and task.cancelled()
