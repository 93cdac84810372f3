"""`smolvlm-client upload --resumable`: tus through a connection that breaks, against the real
app on a loopback port, the client a real process.

Between them sits a TCP proxy on 127.0.0.1 that breaks a PATCH once, after forwarding
part of it: by closing the connection (the client's retry must resume it), or by holding
it while the test kills the client (the same command run again must resume it, from the
upload's URL the client keeps under its cache dir). What the server received is recorded
by a middleware of the app (each tus request's method, path and Upload-Offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import hdrs, web

from server.app import create_app
from tests.client.test_client import REPO, Run, client_env, one_error_line
from tests.media import write_text_file
from tests.server.http_helpers import (
    POLL_LIMIT_SECONDS,
    POLL_SECONDS,
    V1,
    RunAppLikeServer,
    make_config,
)
from tests.server.web.test_page_tus import padded

pytestmark = pytest.mark.slow

UPLOADS = f"{V1}/uploads/"
HOST = "127.0.0.1"
PROXY_READ_BYTES = 16 * 1024
MIB = 1024 * 1024
# The video, padded to this size, is broken off after half of it went through: enough for
# the server to be reading its PATCH by then (bytes still in aiohttp's buffer at a cut
# are lost to it, and are sent again).
VIDEO_BYTES = 8 * MIB


@dataclass(frozen=True)
class Received:
    """One tus request as the server got it."""

    method: str
    path: str
    offset: int | None


class BreakingProxy:
    """Forwards TCP connections to the server; the first PATCH is broken once, after
    `after` bytes of it went through: closed (`hold=False`), or held open with nothing
    more forwarded until the client closes it (`hold=True`)."""

    def __init__(self, target_port: int, after: int, hold: bool) -> None:
        self.target_port = target_port
        self.after = after
        self.hold = hold
        self.broken = asyncio.Event()
        self._server: asyncio.Server | None = None
        # One task per client connection. Python 3.11's `wait_closed` does not wait for
        # them: one still opening its upstream when the test ended left two sockets to be
        # collected after the loop had closed (a ResourceWarning blamed on a later test).
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> BreakingProxy:
        self._server = await asyncio.start_server(self._connection, HOST, 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        this = asyncio.current_task()
        assert this is not None
        self._connections.add(this)
        ends = [writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self.target_port)
            ends.append(upstream_writer)
            upward = asyncio.create_task(self._upward(reader, upstream_writer))
            downward = asyncio.create_task(self._pipe(upstream_reader, writer))
            try:
                await asyncio.wait({upward, downward}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (upward, downward):
                    task.cancel()
                await asyncio.gather(upward, downward, return_exceptions=True)
        finally:
            self._connections.discard(this)
            for end in ends:
                end.close()
                with contextlib.suppress(ConnectionError):
                    await end.wait_closed()

    async def _upward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client to server; the first PATCH to pass breaks after `after` bytes."""
        first = await reader.read(PROXY_READ_BYTES)
        breaking = first.startswith(b"PATCH") and not self.broken.is_set()
        if breaking:
            self.broken.set()  # once only
        sent, data = 0, first
        while data:
            if breaking and sent + len(data) >= self.after:
                writer.write(data[: self.after - sent])
                await writer.drain()
                if self.hold:  # the rest goes nowhere, until the client goes away
                    while await reader.read(PROXY_READ_BYTES):
                        pass
                return
            writer.write(data)
            await writer.drain()
            sent += len(data)
            data = await reader.read(PROXY_READ_BYTES)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(PROXY_READ_BYTES):
            writer.write(data)
            await writer.drain()


async def serve_recording(aiohttp_client, tmp_path) -> tuple[Any, list[Received]]:
    """The app (like `web.run_app`, fixture worker) noting each tus request it receives."""
    app = create_app(make_config(tmp_path))
    received: list[Received] = []

    @web.middleware
    async def note(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(UPLOADS):
            offset = request.headers.get("Upload-Offset")
            received.append(Received(request.method, request.path, int(offset) if offset else None))
        return await handler(request)

    app.middlewares.append(note)
    return await aiohttp_client(RunAppLikeServer(app)), received


@contextlib.asynccontextmanager
async def client_process(
    url: str, video: Path, cache: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m client upload --resumable --no-analysis --no-watch VIDEO`, its cache dir
    `cache`; killed if still running when the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client",
        "--url",
        url,
        "upload",
        str(video),
        "--resumable",
        "--no-analysis",
        "--no-watch",
        cwd=REPO,
        env=client_env(XDG_CACHE_HOME=str(cache)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def finish(process: asyncio.subprocess.Process) -> Run:
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def patch_offsets(received: list[Received]) -> list[int | None]:
    return [r.offset for r in received if r.method == hdrs.METH_PATCH]


@pytest.fixture
def video(sample_video, tmp_path) -> Path:
    return padded(sample_video, tmp_path / "padded.mp4", VIDEO_BYTES)


async def the_uploaded_video(client, session_id: str) -> bytes:
    status = await client.get(f"{V1}/status/{session_id}")
    assert status.status == 200 and (await status.json())["status"] == "uploaded"
    return await (await client.get(f"{V1}/results/{session_id}/video")).read()


async def test_a_connection_dropped_mid_patch_is_resumed_from_the_servers_offset(
    aiohttp_client, tmp_path, video
):
    client, received = await serve_recording(aiohttp_client, tmp_path)
    size = video.stat().st_size
    async with BreakingProxy(client.port, after=size // 2, hold=False) as proxy:
        async with client_process(f"http://{HOST}:{proxy.port}", video, tmp_path) as run:
            done = await finish(run)

    assert done.code == 0, done.err
    assert "Upload interrupted (" in done.err and "); resuming" in done.err
    session_id = done.out.strip()
    assert await the_uploaded_video(client, session_id) == video.read_bytes()
    methods = [r.method for r in received if r.method != hdrs.METH_OPTIONS]
    assert methods.count(hdrs.METH_POST) == 1 and hdrs.METH_HEAD in methods
    offsets = patch_offsets(received)
    assert offsets[0] == 0 and len(offsets) == 2
    # Most of what got through before the cut was kept, and not sent again.
    assert 0 < offsets[1] < size // 2


async def test_the_same_command_run_again_resumes_an_upload_whose_client_was_killed(
    aiohttp_client, tmp_path, video
):
    client, received = await serve_recording(aiohttp_client, tmp_path)
    size = video.stat().st_size
    cache = tmp_path / "cache"
    async with BreakingProxy(client.port, after=size // 2, hold=True) as proxy:
        url = f"http://{HOST}:{proxy.port}"
        async with client_process(url, video, cache) as first:
            await proxy.broken.wait()
            first.send_signal(signal.SIGKILL)
            await first.wait()
        upload_path = next(r.path for r in received if r.method == hdrs.METH_PATCH)
        kept = await offset_once_written(client, upload_path)

        async with client_process(url, video, cache) as second:
            done = await finish(second)

    assert done.code == 0, done.err
    assert done.err.startswith(f"Resuming the upload of {video.name}: ")
    methods = [r.method for r in received if r.method != hdrs.METH_OPTIONS]
    assert methods.count(hdrs.METH_POST) == 1  # the second run made no new upload
    assert patch_offsets(received) == [0, kept]
    session_id = done.out.strip()
    assert await the_uploaded_video(client, session_id) == video.read_bytes()
    # Completed: the client forgot the URL, so the next upload of the file is a new one.
    stored = (cache / "smolvlm-client" / "tus-uploads.json").read_text()
    assert UPLOADS not in stored


async def offset_once_written(client, upload_path: str) -> int:
    """The upload's offset once the cut-off PATCH's bytes are in (its handler has ended)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + POLL_LIMIT_SECONDS
    while True:
        body = await (await client.get(upload_path)).json()
        if body["offset"] > 0 or loop.time() > deadline:
            assert body["offset"] > 0, body
            return body["offset"]
        await asyncio.sleep(POLL_SECONDS)


async def test_a_file_refused_on_its_last_byte_is_one_error_line_and_forgotten(
    aiohttp_client, tmp_path
):
    """The server's reason (415: not a video), not a retry; nothing left to resume."""
    client, received = await serve_recording(aiohttp_client, tmp_path)
    text = write_text_file(tmp_path / "notes.mp4")
    cache = tmp_path / "cache"

    async with client_process(str(client.make_url("")).rstrip("/"), text, cache) as run:
        done = await finish(run)

    assert one_error_line(done, "Unsupported media type: ")
    assert [r.method for r in received].count(hdrs.METH_PATCH) == 1
    assert UPLOADS not in (cache / "smolvlm-client" / "tus-uploads.json").read_text()
