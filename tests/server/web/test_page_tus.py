"""The page's resumable uploads: tus 1.0.0 through the vendored tus-js-client, in Chromium.

The page is given small chunks (`window.TUS_CHUNK_BYTES`) and a real video padded to
several of them, so a lost connection and a closed page fall between chunks. What the
server received is recorded by a middleware of the app under test (each tus request's
method, Upload-Offset and Content-Length as they arrive), so "resumed, nothing sent
twice" is checked where it matters: at the server, not in the browser's own account.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import hdrs, web
from yarl import URL

from server.app import create_app
from tests.server.http_helpers import (
    HTTP_WORKER,
    V1,
    RunAppLikeServer,
    make_config,
    start,
)
from tests.server.web import test_page
from tests.server.web.test_page import REAL_WORKER, finished_with_thumbnails_and_reel, start_job

# The page tests' Chromium fixtures, shared (pytest finds fixtures by their module name).
chromium = test_page.chromium
browser = test_page.browser

pytestmark = pytest.mark.usefixtures("backend")

UPLOADS = f"{V1}/uploads/"
CHUNK_BYTES = 256 * 1024
# The padded video spans this many chunks (the last one shorter).
CHUNKS = 6
VIDEO_BYTES = CHUNK_BYTES * (CHUNKS - 1) + CHUNK_BYTES // 2
# Small chunks, and every text of the status line recorded as it is shown.
PAGE_SETUP = f"""
window.TUS_CHUNK_BYTES = {CHUNK_BYTES};
window.statusHistory = [];
document.addEventListener("DOMContentLoaded", () => {{
  const status = document.getElementById("status");
  new MutationObserver(() => window.statusHistory.push(status.textContent))
    .observe(status, {{ childList: true }});
}});
"""


@dataclass(frozen=True)
class Received:
    """One tus request as the server got it."""

    method: str
    offset: int | None  # Upload-Offset (PATCH)
    length: int | None  # Content-Length (PATCH)


def padded(source: Path, path: Path, size: int) -> Path:
    """`source` followed by an MP4 `free` box up to `size` bytes: still the same video to
    any reader (they skip `free` boxes), but several chunks long."""
    shutil.copyfile(source, path)
    padding = size - path.stat().st_size
    with open(path, "r+b") as out:
        out.seek(0, 2)
        out.write(struct.pack(">I4s", padding, b"free"))
        out.truncate(size)
    return path


@pytest.fixture
def big_video(sample_video, tmp_path) -> Path:
    return padded(sample_video, tmp_path / "padded.mp4", VIDEO_BYTES)


async def serve_recording(aiohttp_client, tmp_path, **overrides: Any):
    """The app (like `web.run_app`) with a middleware noting each tus request it receives:
    the test client and the list it fills."""
    app = create_app(make_config(tmp_path, **overrides))
    received: list[Received] = []

    @web.middleware
    async def note(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(UPLOADS):
            offset = request.headers.get("Upload-Offset")
            received.append(
                Received(
                    request.method,
                    int(offset) if offset is not None else None,
                    request.content_length,
                )
            )
        return await handler(request)

    app.middlewares.append(note)
    client = await aiohttp_client(RunAppLikeServer(app))
    return client, received


async def open_tus_page(browser, client):
    page = await browser.new_page()
    await page.add_init_script(PAGE_SETUP)
    await page.goto(str(client.make_url("/")))
    return page


def patches(received: list[Received]) -> list[tuple[int | None, int | None]]:
    return [(r.offset, r.length) for r in received if r.method == hdrs.METH_PATCH]


def every_chunk_once() -> list[tuple[int, int]]:
    """The PATCHes of an upload in which no byte was sent twice: each chunk, in order."""
    return [
        (offset, min(CHUNK_BYTES, VIDEO_BYTES - offset))
        for offset in range(0, VIDEO_BYTES, CHUNK_BYTES)
    ]


async def test_the_vendored_tus_client_is_served_without_the_key(aiohttp_client, tmp_path):
    """The page loads it before the visitor can type a key; its MIT licence travels with it."""
    client = await start(aiohttp_client, tmp_path, api_key="s3cret")
    response = await client.get("/static/tus.min.js")
    assert response.status == 200 and response.content_type == "text/javascript"
    text = await response.text()
    assert text.startswith("/*!\n * tus-js-client 4.3.1") and "The MIT License (MIT)" in text


async def test_an_upload_goes_through_tus_in_chunks_and_the_results_show_as_before(
    aiohttp_client, tmp_path, browser, big_video, steered_model_dir
):
    client, received = await serve_recording(
        aiohttp_client, tmp_path, worker_command=REAL_WORKER, model=str(steered_model_dir)
    )
    page = await open_tus_page(browser, client)
    multipart: list[str] = []
    page.on("request", lambda r: r.url.endswith(f"{V1}/upload") and multipart.append(r.url))

    await start_job(page, big_video, segment_seconds=3)

    await page.wait_for_function("document.getElementById('analysis-progress').value === 100")
    await finished_with_thumbnails_and_reel(page)
    assert await page.locator("#status").text_content() == "Done."
    assert await page.locator("#upload-progress").evaluate("bar => bar.value") == 100
    assert "1 highlight in padded.mp4" in await page.locator("#summary").text_content()
    assert [r.method for r in received if r.method == hdrs.METH_POST] == [hdrs.METH_POST]
    assert patches(received) == every_chunk_once()
    assert multipart == []
    assert not await page.locator("#error").is_visible()
    statuses = await page.evaluate("window.statusHistory")
    assert "Uploading padded.mp4 (resumable: 0.5 of 1.4 MiB sent)" in statuses
    assert "Uploading padded.mp4 (resumable: 1.4 of 1.4 MiB sent)" in statuses


async def test_a_lost_connection_is_retried_from_the_offset_the_server_confirms(
    aiohttp_client, tmp_path, browser, big_video, tiny_model_dir
):
    """The second PATCH fails once on the way (never reaching the server): tus-js-client
    asks the server's offset (HEAD) and goes on from there."""
    client, received = await serve_recording(
        aiohttp_client, tmp_path, worker_command=HTTP_WORKER, model=str(tiny_model_dir)
    )
    page = await open_tus_page(browser, client)
    seen = {"patches": 0}

    async def drop_second_patch(route) -> None:
        if route.request.method == "PATCH":
            seen["patches"] += 1
            if seen["patches"] == 2:
                await route.abort("connectionreset")
                return
        await route.continue_()

    await page.route(f"**{UPLOADS}*", drop_second_patch)

    await start_job(page, big_video, segment_seconds=3)
    await page.locator("#status", has_text="Done.").wait_for()

    methods = [r.method for r in received if r.method != hdrs.METH_OPTIONS]
    # After the first PATCH and the lost second: the offset asked, then on from there.
    assert methods[:4] == [hdrs.METH_POST, hdrs.METH_PATCH, hdrs.METH_HEAD, hdrs.METH_PATCH]
    assert methods.count(hdrs.METH_POST) == 1 and methods.count(hdrs.METH_HEAD) == 1
    assert patches(received) == every_chunk_once()


async def test_a_page_closed_mid_upload_resumes_when_the_same_file_is_chosen_again(
    aiohttp_client, tmp_path, browser, big_video, tiny_model_dir
):
    """Two chunks acknowledged, then the link lost for good (every later request fails on
    the way), the page closed: a new page given the same file (same settings) asks the
    server where it stands and sends the rest."""
    client, received = await serve_recording(
        aiohttp_client, tmp_path, worker_command=HTTP_WORKER, model=str(tiny_model_dir)
    )
    first = await open_tus_page(browser, client)
    lost = asyncio.Event()
    seen = {"patches": 0}

    async def lose_the_link_at_the_third_patch(route) -> None:
        if route.request.method == "PATCH":
            seen["patches"] += 1
        if seen["patches"] >= 3:  # this PATCH and the retries' HEADs never get through
            lost.set()
            await route.abort("internetdisconnected")
            return
        await route.continue_()

    await first.route(f"**{UPLOADS}*", lose_the_link_at_the_third_patch)
    await start_job(first, big_video, segment_seconds=3)
    await lost.wait()
    await first.close()
    assert patches(received) == every_chunk_once()[:2]
    upload_url = await _stored_upload_url(browser, client)
    state = await (await client.get(URL(upload_url).path)).json()
    assert state["offset"] == 2 * CHUNK_BYTES and state["sessionId"] is None

    second = await open_tus_page(browser, client)
    await start_job(second, big_video, segment_seconds=3)
    await second.locator("#status", has_text="Done.").wait_for()

    methods = [r.method for r in received]
    assert methods.count(hdrs.METH_POST) == 1  # no second upload was created
    assert hdrs.METH_HEAD in methods
    assert patches(received) == every_chunk_once()
    statuses = await second.evaluate("window.statusHistory")
    assert "Resuming the upload of padded.mp4…" in statuses
    session_id = await second.locator("#session-id").text_content()
    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    assert status["status"] == "completed"
    # Completed: the stored URL is gone, so the same file later makes a new upload.
    assert await _stored_upload_url(browser, client) is None


async def test_without_tus_the_page_falls_back_to_one_multipart_post(
    aiohttp_client, tmp_path, browser, sample_video, tiny_model_dir
):
    """A server that does not answer tus's OPTIONS (an older one) still gets the upload."""
    client, received = await serve_recording(
        aiohttp_client, tmp_path, worker_command=HTTP_WORKER, model=str(tiny_model_dir)
    )
    page = await open_tus_page(browser, client)
    await page.route(
        f"**{UPLOADS}",
        lambda route: route.fulfill(status=404, json={"error": "Not found"}),
    )
    multipart: list[str] = []
    page.on("request", lambda r: r.url.endswith(f"{V1}/upload") and multipart.append(r.method))

    await start_job(page, sample_video, segment_seconds=3)
    await page.locator("#status", has_text="Done.").wait_for()

    assert multipart == ["POST"]
    assert received == []


async def _stored_upload_url(browser, client) -> str | None:
    """The upload URL tus-js-client keeps in the origin's localStorage (None if none)."""
    page = await browser.new_page()
    await page.goto(str(client.make_url("/")))
    stored = await page.evaluate(
        """Object.keys(localStorage).filter((key) => key.startsWith("tus::"))
             .map((key) => JSON.parse(localStorage.getItem(key)).uploadUrl)"""
    )
    await page.close()
    assert len(stored) <= 1, stored
    return stored[0] if stored else None
