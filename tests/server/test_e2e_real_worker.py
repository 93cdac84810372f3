"""The whole service end to end: HTTP -> runner -> `python -m inference_worker` -> tiny SmolVLM2.

The steered tiny model answers "8" to everything, so highlights are found and the reel
and thumbnails exist; the random one exercises the messy-reply path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import av
import pytest

from tests.server.http_helpers import (
    V1,
    finished,
    start,
    until_running,
    upload,
    upload_id,
    video_form,
)
from tests.server.web.test_http_events import read_all

pytestmark = pytest.mark.slow

REAL_WORKER = (sys.executable, "-m", "inference_worker")


async def real_client(aiohttp_client, tmp_path, model_dir: Path, **overrides):
    return await start(
        aiohttp_client, tmp_path, worker_command=REAL_WORKER, model=str(model_dir), **overrides
    )


def worker_pids() -> set[int]:
    """Live job workers (`inference_worker`, not its probe service) that are our children."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        job_worker = b"inference_worker" in cmdline and b"--probe-service" not in cmdline
        if stat[0] != "Z" and int(stat[1]) == os.getpid() and job_worker:
            pids.add(int(entry.name))
    return pids


async def test_highlights_upload_poll_results_artifacts_cleanup(
    aiohttp_client, tmp_path, sample_video, steered_model_dir
):
    client = await real_client(aiohttp_client, tmp_path, steered_model_dir)
    response = await upload(
        client,
        sample_video,
        "match.mp4",
        analysis_type="highlights",
        params='{"segment_seconds": 4}',
    )
    assert response.status == 202, await response.text()
    session_id = (await response.json())["sessionId"]
    assert response.headers["Location"] == f"{V1}/status/{session_id}"
    await finished(client, session_id)

    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    assert status["status"] == "completed" and status["progress"] == 1.0
    body = await (await client.get(f"{V1}/results/{session_id}")).json()
    results = body["results"]
    assert results["model"] == steered_model_dir.name
    assert results["video"]["filename"] == "match.mp4"
    assert results["highlights_found"] == len(results["highlights"]) == 1
    highlight = results["highlights"][0]
    assert highlight["significance"] == 8
    assert highlight["thumbnail"] == f"{V1}/results/{session_id}/thumbnails/0"
    assert results["reel"]["url"] == f"{V1}/results/{session_id}/reel"
    assert str(tmp_path) not in str(body)

    thumbnail = await client.get(highlight["thumbnail"])
    assert thumbnail.status == 200 and thumbnail.content_type == "image/jpeg"
    reel = await client.get(results["reel"]["url"])
    assert reel.status == 200 and reel.content_type == "video/mp4"
    reel_path = tmp_path / "reel.mp4"
    reel_path.write_bytes(await reel.read())
    with av.open(str(reel_path)) as container:
        assert container.streams.video and container.streams.audio
    ranged = await client.get(results["reel"]["url"], headers={"Range": "bytes=0-99"})
    assert ranged.status == 206 and len(await ranged.read()) == 100

    assert (await client.delete(f"{V1}/cleanup/{session_id}")).status == 200
    assert (await client.get(f"{V1}/status/{session_id}")).status == 404
    assert not any((tmp_path / "data" / "uploads").iterdir())
    assert not any((tmp_path / "data" / "artifacts").iterdir())


async def test_workout_two_step_flow(aiohttp_client, tmp_path, make_video, tiny_model_dir):
    client = await real_client(aiohttp_client, tmp_path, tiny_model_dir)
    session_id = await upload_id(client, make_video("gym.mp4", seconds=8.0), "gym.mp4")
    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    assert status["status"] == "uploaded"

    started = await client.post(
        f"{V1}/analyze/{session_id}",
        json={"analysis_type": "workout", "params": {"segment_seconds": 4}},
    )
    assert started.status == 202, await started.text()
    await finished(client, session_id)
    results = (await (await client.get(f"{V1}/results/{session_id}")).json())["results"]
    assert results["analysisType"] == "workout"
    assert results["segments"][0]["start"] == 0.0
    assert set(results["summary"]) == {
        "exercises",
        "total_reps",
        "active_seconds",
        "exercise_totals",
    }
    again = await client.post(f"{V1}/analyze/{session_id}", json={"analysis_type": "workout"})
    assert again.status == 409


async def test_event_stream_follows_a_real_job_and_resumes_without_loss(
    aiohttp_client, tmp_path, sample_video, steered_model_dir
):
    client = await real_client(aiohttp_client, tmp_path, steered_model_dir)
    session_id = await upload_id(
        client, sample_video, analysis_type="highlights", params='{"segment_seconds": 3}'
    )
    stream = await client.get(f"{V1}/events/{session_id}")
    frames = await read_all(stream)
    names = [frame.event for frame in frames]
    assert names[-1] == "completed" and names.count("completed") == 1
    assert "partial" in names
    ids = [frame.id for frame in frames]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [frame.data["progress"] for frame in frames if frame.event == "status"]
    assert progress == sorted(progress)
    # Each judged segment came live as a timeline partial, exactly as the results list it.
    results = (await (await client.get(f"{V1}/results/{session_id}")).json())["results"]
    partials = [frame.data for frame in frames if frame.event == "partial"]
    timeline = [p["item"] for p in partials if p["kind"] == "timeline"]
    assert timeline == results["timeline"] and len(timeline) == 4  # 12 s in 3-s segments
    assert {p["kind"] for p in partials} == {"timeline", "highlights"}

    # A client that dropped after the first partial resumes with exactly what it missed.
    first_partial = next(frame for frame in frames if frame.event == "partial")
    resumed = await read_all(
        await client.get(
            f"{V1}/events/{session_id}", headers={"Last-Event-ID": str(first_partial.id)}
        )
    )
    missed = [frame for frame in frames if frame.id > first_partial.id]
    assert [(f.id, f.event, f.data) for f in resumed] == [(f.id, f.event, f.data) for f in missed]


async def test_cancel_answers_only_once_the_worker_process_is_gone(
    aiohttp_client, tmp_path, make_video, tiny_model_dir
):
    client = await real_client(aiohttp_client, tmp_path, tiny_model_dir)
    video = make_video("long.mp4", seconds=60.0)
    session_id = await upload_id(
        client, video, analysis_type="highlights", params='{"segment_seconds": 1}'
    )
    await until_running(client, session_id)
    running = worker_pids()
    assert running, "the job's worker should be running"

    response = await client.post(f"{V1}/cancel/{session_id}")

    assert response.status == 200
    assert await response.json() == {
        "sessionId": session_id,
        "status": "cancelled",
        "message": "Processing cancelled successfully",
    }
    assert not (running & worker_pids())
    assert (await client.post(f"{V1}/cancel/{session_id}")).status == 200
    results = await client.get(f"{V1}/results/{session_id}")
    assert results.status == 400 and (await results.json())["error"] == "Session was cancelled"


async def test_second_job_waits_in_the_queue_behind_the_concurrency_limit(
    aiohttp_client, tmp_path, make_video, tiny_model_dir
):
    client = await real_client(aiohttp_client, tmp_path, tiny_model_dir, max_concurrent_jobs=1)
    video = make_video("long.mp4", seconds=60.0)
    first = await upload_id(
        client, video, analysis_type="highlights", params='{"segment_seconds": 1}'
    )
    second = await upload_id(client, video, analysis_type="workout")
    await until_running(client, first)
    queued = await (await client.get(f"{V1}/status/{second}")).json()
    assert queued["status"] == "pending" and queued["queuePosition"] == 1
    assert len(worker_pids()) == 1
    await client.post(f"{V1}/cancel/{first}")
    await finished(client, second)
    assert (await (await client.get(f"{V1}/status/{second}")).json())["status"] == "completed"


async def test_synchronous_endpoint_answers_with_the_bare_results(
    aiohttp_client, tmp_path, sample_video, steered_model_dir
):
    client = await real_client(aiohttp_client, tmp_path, steered_model_dir)
    form_fields = {"min_significance": "9", "segment_seconds": "6"}
    response = await client.post(
        "/analyze/highlights", data=video_form(sample_video, "match.mp4", **form_fields)
    )
    assert response.status == 200, await response.text()
    results = await response.json()
    assert results["analysisType"] == "highlights"
    assert results["highlights"] == [] and results["reel"] is None  # 8 < 9: nothing kept


async def test_a_model_that_cannot_be_loaded_fails_the_job_with_a_clear_message(
    aiohttp_client, tmp_path, sample_video
):
    """The message names the model but not the server's path; /health then says unhealthy."""
    client = await real_client(aiohttp_client, tmp_path, tmp_path / "missing-model")
    session_id = await upload_id(client, sample_video, analysis_type="workout")
    await finished(client, session_id)
    failed = await client.get(f"{V1}/results/{session_id}")
    body = await failed.json()
    assert failed.status == 500 and body["error"] == "Analysis failed"
    assert "missing-model" in body["message"] and str(tmp_path) not in body["message"]
    health = await client.get("/health")
    assert health.status == 503
    health_body = await health.json()
    assert health_body["status"] == "unhealthy" and health_body["modelState"] == "unavailable"
    assert "missing-model" in health_body["modelError"]
    assert str(tmp_path) not in health_body["modelError"]
