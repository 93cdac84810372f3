"""Nothing lost across restarts: sessions, results and files survive; interrupted jobs run again."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from server.app import create_app
from server.jobs.runner import RESTARTED_STEP
from server.web import app_keys as keys
from tests.server.conftest import dies
from tests.server.http_helpers import (
    V1,
    finished,
    make_config,
    until_running,
    upload_id,
    video_form,
)
from tests.server.server_process import ServerProcess, children_of

# A bound against hangs only.
JOB_BOUND = 120.0


async def test_a_new_app_on_the_same_data_dir_sees_every_session(
    aiohttp_client, tmp_path, sample_video
):
    config = make_config(tmp_path)
    first = await aiohttp_client(create_app(config))
    done = await upload_id(first, sample_video, analysis_type="highlights")
    waiting = await upload_id(first, sample_video)
    await finished(first, done)
    before = {
        s["sessionId"]: s for s in (await (await first.get(f"{V1}/sessions")).json())["sessions"]
    }
    results_before = await (await first.get(f"{V1}/results/{done}")).json()
    await first.close()

    second = await aiohttp_client(create_app(config))
    after = {
        s["sessionId"]: s for s in (await (await second.get(f"{V1}/sessions")).json())["sessions"]
    }
    assert after == before
    assert after[waiting]["status"] == "uploaded"
    assert await (await second.get(f"{V1}/results/{done}")).json() == results_before
    reel = await second.get(results_before["results"]["reel"]["url"])
    assert reel.status == 200 and len(await reel.read()) > 0
    # The event stream of a loaded session answers at once with its terminal event.
    stream = await second.get(f"{V1}/events/{done}")
    assert b"event: completed" in await stream.read()


async def test_jobs_interrupted_by_a_restart_run_again_and_say_so(
    aiohttp_client, tmp_path, sample_video
):
    """Processing and pending jobs are queued again in order; the status says why."""
    config = make_config(tmp_path, max_concurrent_jobs=1)
    first = await aiohttp_client(create_app(config))
    # hang*: the stand-in worker keeps working until it is stopped.
    running = await upload_id(first, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(first, running)
    waiting = await upload_id(first, sample_video, "hang.mp4", analysis_type="workout")
    await first.close()  # shutdown interrupts the jobs: neither cancelled nor failed

    second = await aiohttp_client(create_app(config))
    body = await until_running(second, running)
    assert body["status"] == "processing"
    assert (await second.app[keys.SESSIONS].get(running)).attempts == 2
    queued = await (await second.get(f"{V1}/status/{waiting}")).json()
    assert queued["status"] == "pending" and queued["queuePosition"] == 1
    assert queued["currentStep"] == RESTARTED_STEP


async def test_too_many_uploads_at_once_get_a_503_with_retry_after(
    aiohttp_client, tmp_path, sample_video
):
    client = await aiohttp_client(create_app(make_config(tmp_path, max_concurrent_uploads=1)))
    slots = client.app[keys.UPLOADS]
    with slots.claim("another-upload-in-progress"):
        response = await client.post(f"{V1}/upload", data=video_form(sample_video))
        body = await response.json()
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert body["error"] == "Server busy" and "uploads in progress" in body["message"]
    assert (await client.post(f"{V1}/upload", data=video_form(sample_video))).status == 202


async def status_of(http, server, session_id) -> dict:
    async with http.get(f"{server.url}{V1}/status/{session_id}") as response:
        return await response.json()


async def until(http, server, session_id, done) -> dict:
    deadline = asyncio.get_running_loop().time() + JOB_BOUND
    while not done(body := await status_of(http, server, session_id)):
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)
    return body


@pytest.mark.slow
async def test_kill_9_of_the_server_loses_nothing_and_the_interrupted_job_completes(
    tmp_path, make_video, steered_model_dir
):
    data_dir = tmp_path / "data"
    short, long = (
        make_video("short.mp4", seconds=6.0, audio=True),
        make_video("long.mp4", seconds=30.0),
    )
    async with aiohttp.ClientSession() as http:
        server = ServerProcess(data_dir, steered_model_dir)
        try:
            await server.ready(http)

            async def upload(video, params):
                form = video_form(video, video.name, analysis_type="highlights", params=params)
                async with http.post(f"{server.url}{V1}/upload", data=form) as response:
                    assert response.status == 202, await response.text()
                    return (await response.json())["sessionId"]

            done = await upload(short, '{"segment_seconds": 3}')
            await until(http, server, done, lambda body: body["status"] == "completed")
            async with http.get(f"{server.url}{V1}/results/{done}") as response:
                results_before = await response.json()
            running = await upload(long, '{"segment_seconds": 1}')
            await until(
                http, server, running, lambda b: b["status"] == "processing" and b["progress"] > 0.1
            )
            workers = children_of(server.proc.pid)
            assert workers

            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(timeout=30)
            for pid in workers:  # orphaned workers see their stdin close and stop by themselves
                assert await dies(pid)

            server = ServerProcess(data_dir, steered_model_dir)
            await server.ready(http)
            final = await until(http, server, running, lambda body: body["status"] == "completed")
            assert final["progress"] == 1.0
            async with http.get(f"{server.url}{V1}/results/{done}") as response:
                assert await response.json() == results_before
            async with http.get(
                f"{server.url}{results_before['results']['reel']['url']}"
            ) as response:
                assert response.status == 200 and response.content_type == "video/mp4"
            async with http.get(f"{server.url}{V1}/results/{running}") as response:
                assert (await response.json())["results"]["highlights_found"] == 1
        finally:
            server.stop()
