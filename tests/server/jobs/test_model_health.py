"""/health tells whether the model can be loaded: `loading`, `ready`, `unavailable` (why), or
`unknown` without warm workers until a job has run; unavailable is a 503 `unhealthy`."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from protocol import ModelState
from server.jobs.model_health import ModelHealth
from tests.server.conftest import WAIT
from tests.server.http_helpers import finished, start, upload_id

REAL_WORKER = (sys.executable, "-m", "inference_worker")


def test_the_state_starts_loading_with_warm_workers_and_unknown_without():
    assert ModelHealth("m", warm=True).state == "loading"
    assert ModelHealth("m", warm=False).state == "unknown"


def test_an_unavailable_model_is_logged_once_however_often_it_is_reported(caplog):
    health = ModelHealth("/models/smol", warm=True)
    with caplog.at_level(logging.INFO, logger="server.jobs.model_health"):
        for _ in range(3):
            health.report(ModelState.UNAVAILABLE, "no weights")
    assert (health.state, health.reason) == ("unavailable", "no weights")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "smol is unavailable" in errors[0].getMessage()
    health.report(ModelState.READY)
    assert (health.state, health.reason) == ("ready", None)


async def health_of(client) -> tuple[int, dict]:
    response = await client.get("/health")
    return response.status, await response.json()


async def health_until(client, wanted_state: str) -> list[tuple[int, dict]]:
    """Every /health answer, polled until the model is in `wanted_state` (or WAIT passes)."""
    seen = [await health_of(client)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while seen[-1][1]["modelState"] != wanted_state and loop.time() < deadline:
        await asyncio.sleep(0.1)
        seen.append(await health_of(client))
    return seen


async def test_without_warm_workers_a_jobs_model_failure_makes_the_node_unhealthy(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path)
    status, body = await health_of(client)
    assert status == 200 and body["modelState"] == "unknown"
    session_id = await upload_id(client, sample_video, "nomodel.mp4", analysis_type="highlights")
    await finished(client, session_id)
    status, body = await health_of(client)
    assert status == 503
    assert body["status"] == "unhealthy" and body["modelState"] == "unavailable"
    assert body["modelError"] == "no weights found"

    session_id = await upload_id(client, sample_video, "ok.mp4", analysis_type="highlights")
    await finished(client, session_id)
    status, body = await health_of(client)
    assert status == 200 and body["modelState"] == "ready" and body["modelError"] is None


@pytest.mark.slow
async def test_a_warm_worker_that_cannot_load_the_model_makes_health_a_503(
    aiohttp_client, tmp_path, caplog
):
    client = await start(
        aiohttp_client,
        tmp_path,
        worker_command=REAL_WORKER,
        model=str(tmp_path / "no-such-model"),
        warm_workers=1,
    )
    bodies = await health_until(client, "unavailable")
    status, body = bodies[-1]
    assert status == 503
    assert body["status"] == "unhealthy" and body["modelState"] == "unavailable"
    assert "no-such-model" in body["modelError"]
    assert {b["modelState"] for _, b in bodies} <= {"loading", "unavailable"}
    logged = [r for r in caplog.records if r.name == "server.jobs.model_health"]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR


@pytest.mark.slow
async def test_a_warm_worker_with_the_model_loaded_makes_it_ready(
    aiohttp_client, tmp_path, tiny_model_dir
):
    client = await start(
        aiohttp_client,
        tmp_path,
        worker_command=REAL_WORKER,
        model=str(tiny_model_dir),
        warm_workers=1,
    )
    bodies = await health_until(client, "ready")
    assert bodies[-1] == (200, {**bodies[-1][1], "status": "healthy", "modelError": None})
    assert {body["modelState"] for _, body in bodies} <= {"loading", "ready"}
