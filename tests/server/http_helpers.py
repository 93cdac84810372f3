"""Helpers for the HTTP tests: the real app with the real runner, driving fixture workers.

`tests/fixtures/http_worker.py` stands in for the inference worker; the upload's filename
picks its behaviour (`fail*`, `hang*`, `noreel*`, anything else succeeds with artifacts).
"""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Config
from server.state.models import Session
from server.web import app_keys as keys
from server.web.routes import API_ROUTES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HTTP_WORKER = (sys.executable, str(FIXTURES / "http_worker.py"))
V1 = "/api/v1/video"
# The keys of API.md's status body, in the order the server sends them.
STATUS_KEYS = (
    "sessionId",
    "status",
    "progress",
    "currentStep",
    "analysisType",
    "createdAt",
    "updatedAt",
    "error",
    "queuePosition",
    "webhook",
)
# Every route that takes a session id, with its method ({id} to be filled in), from the
# route table; the thumbnail and export paths with a valid index and format.
ID_ROUTES = [
    (route.method, route.path.format(sessionId="{id}", n="0", format="otio"))
    for route in API_ROUTES
    if "{sessionId}" in route.path
]
# Status checks in tests are short sleeps in a loop; this only bounds a broken test.
POLL_SECONDS = 0.02
POLL_LIMIT_SECONDS = 30.0


# What the `backend` fixture adds to every config: nothing for SQLite, a URL for Redis.
BACKEND_SETTINGS: dict[str, Any] = {}


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "worker_command": HTTP_WORKER,
        "warm_workers": 0,
        "disconnect_poll_seconds": 0.05,
        **BACKEND_SETTINGS,
    }
    settings.update(overrides)
    return Config(**settings)


class RunAppLikeServer(TestServer):
    """aiohttp's test server cancels handlers when a client disconnects; `web.run_app` does
    not (handler_cancellation=False). This one behaves like `python -m server`."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


async def start(
    aiohttp_client: Any, tmp_path: Path, *, like_run_app: bool = False, **overrides: Any
) -> TestClient:
    """A test client for `create_app` with the fixture worker and `overrides`."""
    app = create_app(make_config(tmp_path, **overrides))
    return await aiohttp_client(RunAppLikeServer(app) if like_run_app else app)


async def start_watching_route(
    aiohttp_client: Any, tmp_path: Path, route: str, *, like_run_app: bool
) -> tuple[TestClient, asyncio.Event]:
    """A test client whose returned event is set once a handler of `route` has ended.

    For disconnect tests: a client that leaves must not leave its handler running.
    """
    app = create_app(make_config(tmp_path))
    ended = asyncio.Event()

    @web.middleware
    async def note_the_end(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if request.match_info.route.name == route:
                ended.set()

    app.middlewares.append(note_the_end)
    client = await aiohttp_client(RunAppLikeServer(app) if like_run_app else app)
    return client, ended


def video_form(
    video: Path | None, filename: str = "clip.mp4", field: str = "file", **fields: str
) -> aiohttp.FormData:
    """A multipart body with the video under `field` (if given) and text `fields`."""
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    if video is not None:
        # BytesIO: aiohttp warns about plain bytes bodies over 1 MiB (and warnings are errors).
        content = io.BytesIO(video.read_bytes())
        form.add_field(field, content, filename=filename, content_type="video/mp4")
    return form


async def upload(
    client: TestClient, video: Path, filename: str = "clip.mp4", **fields: str
) -> aiohttp.ClientResponse:
    return await client.post(f"{V1}/upload", data=video_form(video, filename, **fields))


async def upload_id(
    client: TestClient, video: Path, filename: str = "clip.mp4", **fields: str
) -> str:
    """Upload and return the new session id (asserting the 202)."""
    response = await upload(client, video, filename, **fields)
    assert response.status == 202, await response.text()
    return (await response.json())["sessionId"]


async def finished(client: TestClient, session_id: str) -> Session:
    """Wait until the session's job has ended (through the runner, not a timer)."""
    return await client.app[keys.RUNNER].wait(session_id)


async def until_status(client: TestClient, session_id: str, *wanted: str) -> dict[str, Any]:
    """Poll the status route until the session is in one of `wanted`."""
    return await _until(client, session_id, lambda body: body["status"] in wanted)


async def until_running(client: TestClient, session_id: str) -> dict[str, Any]:
    """Poll until the session's worker is up and has reported progress."""
    return await _until(
        client, session_id, lambda body: body["status"] == "processing" and body["progress"] > 0
    )


async def _until(client: TestClient, session_id: str, done: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + POLL_LIMIT_SECONDS
    while True:
        body = await (await client.get(f"{V1}/status/{session_id}")).json()
        if done(body) or loop.time() > deadline:
            assert done(body), body
            return body
        await asyncio.sleep(POLL_SECONDS)


def files_under(data_dir: Path) -> list[Path]:
    """Every file and folder below uploads/ and artifacts/ (a rejected upload leaves none)."""
    return sorted(
        path for folder in ("uploads", "artifacts") for path in (data_dir / folder).rglob("*")
    )
