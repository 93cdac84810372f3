"""Hostile input, all in one place: a bad request is a 4xx in API.md's JSON error shape
(`error`, `message` saying what to fix, `code` equal to the status), never a 5xx; it
leaves no file behind under DATA_DIR, shows no server path and no traceback, and the
server stays healthy.

One server per configuration takes every attack of this module in turn, as a server in
production would (module-scoped event loop): each case checks that the files under the
server's folder are exactly as before and that /health answers, and the module's last
test checks that no response at all was a 5xx and that a normal upload still completes.
Requests are sent with the path exactly as written (no client-side normalising), and the
malformed ones byte for byte over a raw socket.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from yarl import URL

from server.app import create_app
from server.state.models import SessionStatus
from server.web import app_keys as keys
from server.web.handlers_sessions import MAX_LIST_LIMIT
from server.web.routes import API_ROUTES
from tests.media import (
    write_audio_only,
    write_random_bytes,
    write_still_image,
    write_text_file,
    write_truncated,
    write_zero_bytes,
)
from tests.server import http_helpers
from tests.server.http_helpers import (
    ID_ROUTES,
    POLL_LIMIT_SECONDS,
    POLL_SECONDS,
    V1,
    RunAppLikeServer,
)
from tests.server.http_helpers import make_config as http_config

# Every case on SQLite, then on Redis (a module's worth of servers for each backend).
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("module_backend")]

KEY = "hostile-test-key"
BOUNDARY = "hostileboundary"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
UPLOAD = f"{V1}/upload"
MiB = 1024 * 1024
# Bounds a raw exchange against a hang; a passing case answers in milliseconds.
RAW_BOUND_SECONDS = 30.0
# API.md: what API_KEY leaves open (the page, its icon, health and the document).
PUBLIC = {"/", "/favicon.ico", "/static/tus.min.js", "/health", "/api/v1/openapi.json"}


# ---- the servers under attack -----------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP response as received: status, headers and the whole body."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Target:
    """A running server, its folder, what it answered so far and a few known sessions."""

    client: TestClient
    root: Path
    statuses: list[tuple[str, str, int]] = field(default_factory=list)
    done: str = ""  # a completed highlights session with a reel and one thumbnail
    waiting: str = ""  # an `uploaded` session for the analyze cases

    @property
    def app(self) -> web.Application:
        return self.client.app

    def url(self, path: str) -> URL:
        """`path` exactly as written: percent-escapes and dots are sent as they are."""
        return URL(f"http://{self.client.host}:{self.client.port}{path}", encoded=True)

    async def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        async with self.client.session.request(method, self.url(path), **kwargs) as response:
            return Answer(response.status, CIMultiDict(response.headers), await response.read())

    async def raw(self, data: bytes) -> Answer:
        """Send bytes as they are on a new connection and read one response.

        The body is read by its Content-Length, not to the end of the connection: a server
        that answered before reading a whole body lingers a while for the rest.
        """
        reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
        try:
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(RAW_BOUND_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
                status_line, *lines = head.decode("latin-1").strip().split("\r\n")
                headers: CIMultiDict[str] = CIMultiDict()
                for line in lines:
                    name, _, value = line.partition(":")
                    headers.add(name.strip(), value.strip())
                if "Content-Length" in headers:
                    body = await reader.readexactly(int(headers["Content-Length"]))
                else:
                    body = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        return Answer(int(status_line.split()[1]), headers, body)

    def tree(self) -> list[Path]:
        """Every file and folder under the server's folder but the session store itself."""
        return sorted(p for p in self.root.rglob("*") if not p.name.startswith("sessions.db"))


async def serve(root: Path, **overrides: Any) -> Target:
    """Start a server with the stand-in worker (run like `python -m server` runs it: a
    client leaving does not cancel its handler) and record the status of every answer."""
    app = create_app(http_config(root, **overrides))
    target = Target(TestClient(RunAppLikeServer(app)), root)

    async def note_status(request: web.Request, response: web.StreamResponse) -> None:
        target.statuses.append((request.method, request.path, response.status))

    app.on_response_prepare.append(note_status)
    await target.client.start_server()
    return target


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target(tmp_path_factory, sample_video, module_backend):
    """The open server (MAX_UPLOAD_MB=1) with one completed and one uploaded session."""
    server = await serve(tmp_path_factory.mktemp("hostile"), max_upload_mb=1)
    try:
        fields = {"analysis_type": b"highlights"}
        server.done = await good_upload(server, sample_video.read_bytes(), fields=fields)
        await server.app[keys.RUNNER].wait(server.done)
        server.waiting = await good_upload(server, sample_video.read_bytes())
        yield server
    finally:
        await server.client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def keyed(tmp_path_factory, module_backend):
    """A server with API_KEY set and nothing in it."""
    settings: dict[str, Any] = {"api_key": KEY}
    if module_backend == "redis":
        # A Redis database of its own: on `target`'s, the two would be one cluster's nodes,
        # sharing sessions and taking each other's jobs.
        url = http_helpers.BACKEND_SETTINGS["redis_url"]
        assert url.endswith("/0")
        settings["redis_url"] = url.removesuffix("/0") + "/1"
    server = await serve(tmp_path_factory.mktemp("keyed"), **settings)
    try:
        yield server
    finally:
        await server.client.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory, sample_video) -> dict[str, Path]:
    """Every kind of file that is not a video, made once, outside the servers' folders."""
    folder = tmp_path_factory.mktemp("not-videos")
    return {
        "zero-bytes": write_zero_bytes(folder / "zero.mp4"),
        "text-renamed-mp4": write_text_file(folder / "list.mp4"),
        "truncated-mp4": write_truncated(folder / "cut.mp4", sample_video),
        "audio-only": write_audio_only(folder / "tone.mp4"),
        "still-image": write_still_image(folder / "photo.png"),
        "random-bytes": write_random_bytes(folder / "noise.mp4"),
    }


# ---- building requests ----------------------------------------------------------------


def part(
    name: bytes | None,
    content: bytes,
    filename: bytes | None = None,
    headers: bytes = b"",
) -> bytes:
    """One multipart part, byte for byte; `headers` are extra header lines ending in CRLF."""
    disposition = b"form-data"
    if name is not None:
        disposition += b'; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return b"Content-Disposition: " + disposition + b"\r\n" + headers + b"\r\n" + content


def multipart(*parts: bytes, boundary: bytes = BOUNDARY.encode()) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return body + b"--" + boundary + b"--\r\n"


def upload_body(content: bytes, filename: bytes = b"clip.mp4", **fields: bytes) -> bytes:
    """Text fields first (as browsers send them), then the file."""
    texts = [part(name.encode(), value) for name, value in fields.items()]
    return multipart(*texts, part(b"file", content, filename))


def raw_request(
    method: str, path: str, body: bytes = b"", content_type: str | None = None, **headers: str
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {headers.pop('content_length', len(body))}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def good_upload(
    target: Target, video: bytes, filename: bytes = b"clip.mp4", fields: dict | None = None
) -> str:
    """Upload `video` (a real one), asserting the 202; the new session's id."""
    answer = await target.request(
        "POST",
        UPLOAD,
        data=io.BytesIO(upload_body(video, filename, **(fields or {}))),
        headers=MULTIPART,
    )
    assert answer.status == 202, answer.text
    return answer.json()["sessionId"]


# ---- what every refusal must be ---------------------------------------------------------


def assert_no_leak(target: Target, answer: Answer) -> None:
    """No server path (the folder, the temp root) and no traceback in what a client sees."""
    text = answer.text + " ".join(answer.headers.values())
    assert str(target.root) not in text, text
    assert "pytest-of" not in text and "Traceback" not in text, text


def assert_json_error(target: Target, answer: Answer, status: int) -> dict[str, Any]:
    """API.md's error shape with `code` equal to the status and a message to act on."""
    assert answer.status == status, (answer.status, answer.text)
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["code"] == status, body
    assert_no_leak(target, answer)
    return body


async def assert_unharmed(target: Target, before: list[Path]) -> None:
    """Nothing added or removed under the server's folder, and /health still answers."""
    assert target.tree() == before
    health = await target.request("GET", "/health")
    assert health.status == 200 and health.json()["status"] == "healthy"


async def refused(
    target: Target, status: int, method: str, path: str, **kwargs: Any
) -> dict[str, Any]:
    """Send a request that must be refused with `status`; check the whole verdict."""
    before = target.tree()
    body = assert_json_error(target, await target.request(method, path, **kwargs), status)
    await assert_unharmed(target, before)
    return body


async def raw_refused(target: Target, status: int, data: bytes) -> dict[str, Any]:
    before = target.tree()
    body = assert_json_error(target, await target.raw(data), status)
    await assert_unharmed(target, before)
    return body


async def upload_refused(target: Target, status: int, body: bytes, path: str = UPLOAD) -> dict:
    return await refused(target, status, "POST", path, data=io.BytesIO(body), headers=MULTIPART)


# ---- the file: not a video, too big ------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        "zero-bytes",
        "text-renamed-mp4",
        "truncated-mp4",
        "audio-only",
        "still-image",
        "random-bytes",
    ],
)
async def test_a_file_that_is_not_a_decodable_video_is_a_415(target, media, kind):
    body = upload_body(media[kind].read_bytes(), b"match.mp4", analysis_type=b"highlights")
    answer = await upload_refused(target, 415, body)
    assert answer["error"] == "Unsupported media type"


@pytest.mark.parametrize("route", ["/analyze/highlights", "/analyze/workout"])
async def test_the_legacy_routes_refuse_a_text_file_with_a_415(target, media, route):
    body = upload_body(media["text-renamed-mp4"].read_bytes())
    await upload_refused(target, 415, body, route)


async def test_a_file_over_max_upload_mb_is_a_413_naming_the_limit(target):
    """Enforced while streaming: the Content-Length alone does not give it away."""
    body = upload_body(b"\0" * (MiB + 1), analysis_type=b"highlights")
    answer = await upload_refused(target, 413, body)
    assert "1 MiB" in answer["message"]


async def test_a_declared_length_far_over_the_limit_is_a_413_before_any_byte_is_read(target):
    head = raw_request("POST", UPLOAD, b"", MULTIPART["Content-Type"], content_length=str(50 * MiB))
    answer = await raw_refused(target, 413, head)
    assert "1 MiB" in answer["message"]


# ---- the form: fields missing, doubled, too big, not text --------------------------------


@pytest.mark.parametrize(
    "make_body, fragment",
    [
        pytest.param(
            lambda video: multipart(part(b"analysis_type", b"highlights")),
            "`file`",
            id="missing-file-field",
        ),
        pytest.param(
            lambda video: multipart(part(b"file", video, b"a.mp4"), part(b"file", video, b"b.mp4")),
            "exactly one video",
            id="two-files",
        ),
        pytest.param(
            lambda video: multipart(
                part(b"file", video, b"a.mp4"), part(b"video", video, b"b.mp4")
            ),
            "exactly one video",
            id="file-and-video",
        ),
        pytest.param(
            lambda video: multipart(part(b"file", b"", b"")),
            "`file`",
            id="empty-file-field-without-a-name",
        ),
        pytest.param(
            lambda video: multipart(part(b"upload", video, b"a.mp4")),
            "send the video as `file`",
            id="file-under-another-field",
        ),
        pytest.param(
            lambda video: multipart(part(None, b"x")),
            "nameless form part",
            id="part-without-a-name",
        ),
        pytest.param(
            lambda video: multipart(
                part(b"analysis_type", b"highlights"), part(b"analysis_type", b"workout")
            ),
            "given twice",
            id="field-given-twice",
        ),
        pytest.param(
            lambda video: multipart(part(b"params", b'{"a": "' + b"x" * 1_000_000 + b'"}')),
            "over 65536 bytes",
            id="params-of-1-MB",
        ),
        pytest.param(
            lambda video: multipart(part(b"analysis_type", b"\xff\xfehighlights")),
            "not UTF-8",
            id="field-not-utf8",
        ),
        pytest.param(
            lambda video: multipart(
                part(
                    b"file",
                    b"--inner\r\n\r\nx\r\n--inner--",
                    b"a.mp4",
                    b"Content-Type: multipart/mixed; boundary=inner\r\n",
                )
            ),
            "Nested multipart",
            id="nested-multipart",
        ),
    ],
)
async def test_a_form_without_exactly_one_file_and_sane_fields_is_a_400(
    target, sample_video, make_body, fragment
):
    answer = await upload_refused(target, 400, make_body(sample_video.read_bytes()))
    assert fragment in answer["message"]


# ---- the body: not a form, or a broken one -----------------------------------------------


@pytest.mark.parametrize(
    "body, content_type",
    [
        pytest.param(b'{"analysis_type": "highlights"}', "application/json", id="json"),
        pytest.param(b"analysis_type=highlights", "application/x-www-form-urlencoded", id="form"),
        pytest.param(b"", None, id="empty-without-type"),
        pytest.param(b"just some text", "text/plain", id="text"),
        pytest.param(b"\0\0\0 ftypisom", "video/mp4", id="raw-video-bytes"),
    ],
)
async def test_a_body_that_is_not_multipart_is_a_400_asking_for_multipart(
    target, body, content_type
):
    headers = {"Content-Type": content_type} if content_type else {}
    answer = await refused(target, 400, "POST", UPLOAD, data=body, headers=headers)
    assert "multipart/form-data" in answer["message"]


VIDEO_PART = part(b"file", b"\0\0\0 ftypisom", b"a.mp4")


@pytest.mark.parametrize(
    "content_type, body",
    [
        pytest.param("multipart/form-data", multipart(VIDEO_PART), id="no-boundary"),
        pytest.param("multipart/form-data; boundary=", multipart(VIDEO_PART), id="empty-boundary"),
        pytest.param(
            MULTIPART["Content-Type"],
            multipart(VIDEO_PART, boundary=b"someotherboundary"),
            id="boundary-not-in-body",
        ),
        pytest.param(
            "multipart/form-data; boundary=" + "b" * 200,
            multipart(VIDEO_PART, boundary=b"b" * 200),
            id="boundary-over-70-chars",
        ),
        pytest.param(MULTIPART["Content-Type"], b"garbage" * 100, id="garbage"),
        pytest.param(MULTIPART["Content-Type"], b"", id="empty"),
        pytest.param(
            MULTIPART["Content-Type"],
            b"--" + BOUNDARY.encode() + b"\r\n" + VIDEO_PART,
            id="no-closing-boundary",
        ),
        pytest.param(
            MULTIPART["Content-Type"],
            b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="file"\r\n'
            b"abc--" + BOUNDARY.encode() + b"--\r\n",
            id="part-headers-never-end",
        ),
        pytest.param(
            MULTIPART["Content-Type"],
            multipart(part(b"file", b"x", b"a\0b.mp4")),
            id="nul-in-filename",
        ),
        pytest.param(
            MULTIPART["Content-Type"],
            multipart(part(b"file", b"x", b"a\x01\x1b[31m.mp4")),
            id="control-chars-in-filename",
        ),
        pytest.param(
            MULTIPART["Content-Type"],
            multipart(part(b"file", b"x", b"x" * 10_000 + b".mp4")),
            id="filename-of-10k-chars",
        ),
        pytest.param(
            MULTIPART["Content-Type"],
            multipart(part(b"file", b"x", b"a.mp4", b"X-Big: " + b"a" * 100_000 + b"\r\n")),
            id="part-header-of-100-KB",
        ),
    ],
)
async def test_a_broken_multipart_body_is_a_400_not_a_500(target, content_type, body):
    """aiohttp's multipart reader raises ValueError or BadHttpMessage; both are the client's."""
    answer = await raw_refused(target, 400, raw_request("POST", UPLOAD, body, content_type))
    assert answer["error"] == "Bad request"


async def test_a_body_cut_off_mid_upload_leaves_nothing_and_the_server_answers(
    target, sample_video
):
    """A raw socket promises more bytes than it sends, then closes: nothing is kept, and the
    log says 499 (the client left), not 500 with a traceback."""
    before, answered = target.tree(), len(target.statuses)
    head = b"--" + BOUNDARY.encode() + b"\r\n" + part(b"file", b"", b"clip.mp4")
    data = raw_request(
        "POST", UPLOAD, head, MULTIPART["Content-Type"], content_length=str(MiB + MiB // 2)
    )
    _, writer = await asyncio.open_connection(target.client.host, target.client.port)
    writer.write(data + sample_video.read_bytes()[: 200 * 1024])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await until(lambda: len(target.statuses) > answered)
    assert target.statuses[answered:] == [("POST", UPLOAD, 499)]
    await assert_unharmed(target, before)


async def until(condition: Callable[[], bool]) -> None:
    """Poll for what no event announces (the server finishing a request nobody awaits)."""
    deadline = asyncio.get_running_loop().time() + POLL_LIMIT_SECONDS
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(POLL_SECONDS)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 20_000 + b"\r\n\r\n",
            id="header-of-20-KB",
        ),
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(500))
            + b"\r\n",
            id="500-headers",
        ),
        pytest.param(
            b"GET " + V1.encode() + b"/status/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            id="url-of-9-KB",
        ),
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="not-http"),
    ],
)
async def test_a_request_head_aiohttp_cannot_parse_gets_its_own_400(target, request_bytes):
    """API.md allows aiohttp's plain 400 here (the app never sees the request); still no
    5xx, no traceback, and the server goes on serving."""
    before = target.tree()
    answer = await target.raw(request_bytes)
    assert answer.status in (400, 413, 414, 431), answer
    assert_no_leak(target, answer)
    await assert_unharmed(target, before)


# ---- the file name: metadata only --------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param(b"../../etc/passwd", id="relative-traversal"),
    pytest.param(b"..\\..\\x.mp4", id="windows-traversal"),
    pytest.param(b"/etc/passwd", id="absolute-posix"),
    pytest.param(b"C:\\Windows\\System32\\x.mp4", id="absolute-windows"),
    pytest.param(b"%2e%2e%2f%2e%2e%2fx.mp4", id="percent-encoded-traversal"),
    pytest.param(b"\xff\xfe\xc3(.mp4", id="not-utf8"),
    pytest.param(b"a%00b%0a.mp4", id="percent-encoded-nul-and-newline"),
    pytest.param("evil\u202e4pm.exe\u200b".encode(), id="bidi-override-and-zero-width"),
    pytest.param(b"y" * 5000 + b".mp4", id="5000-chars"),
    pytest.param(b"..", id="dot-dot"),
]


@pytest.mark.parametrize("filename", HOSTILE_NAMES)
async def test_a_hostile_filename_on_a_bad_file_is_a_415_and_places_nothing(
    target, media, filename
):
    """Even with a name aiming outside DATA_DIR, a refused upload leaves no file anywhere."""
    body = upload_body(media["text-renamed-mp4"].read_bytes(), filename)
    await upload_refused(target, 415, body)


@pytest.mark.parametrize("filename", HOSTILE_NAMES)
async def test_a_hostile_filename_on_a_good_video_is_stored_under_the_servers_own_name(
    target, sample_video, filename
):
    """Not a 4xx: the name is metadata. The file lands in uploads/<id>/source[.ext], the
    name kept is one harmless component, and cleanup removes every trace."""
    before = target.tree()
    session_id = await good_upload(target, sample_video.read_bytes(), filename)
    session = await target.app[keys.SESSIONS].get(session_id)
    folder = target.root / "data" / "uploads" / session_id
    assert Path(session.upload_path).parent == folder
    assert Path(session.upload_path).name in ("source", "source.mp4", "source.exe")
    assert set(target.tree()) - set(before) == {folder, Path(session.upload_path)}
    kept = session.video.filename
    assert kept and len(kept) <= 120 and not kept.startswith(".")
    assert not set(kept) & {"/", "\\", "\0", "\n", "\u202e", "\u200b"}, kept
    assert all(ch.isprintable() for ch in kept), kept
    listed = await target.request("GET", f"{V1}/sessions")
    assert_no_leak(target, listed)
    assert (await target.request("DELETE", f"{V1}/cleanup/{session_id}")).status == 200
    await assert_unharmed(target, before)


# ---- params and analysis_type ------------------------------------------------------------


@pytest.mark.parametrize(
    "analysis_type, params, fragment",
    [
        pytest.param("highlights", "{nope", "not valid JSON", id="not-json"),
        pytest.param("highlights", "[1]", "JSON object", id="array"),
        pytest.param("highlights", '"text"', "JSON object", id="string"),
        pytest.param("highlights", "null", "JSON object", id="null"),
        pytest.param("highlights", "42", "JSON object", id="number"),
        pytest.param(
            "highlights", '{"min_significance": "high"}', "integer from 1 to 10", id="wrong-type"
        ),
        pytest.param(
            "highlights", '{"min_significance": true}', "integer from 1 to 10", id="bool-for-int"
        ),
        pytest.param("highlights", '{"make_reel": "yes"}', "true or false", id="text-for-bool"),
        pytest.param("highlights", '{"max_highlights": 2.5}', "an integer", id="float-for-int"),
        pytest.param(
            "highlights", '{"min_significance": 11}', "from 1 to 10", id="over-the-maximum"
        ),
        pytest.param(
            "highlights", '{"segment_seconds": 0}', "from 1 to 300", id="under-the-minimum"
        ),
        pytest.param("highlights", '{"segment_seconds": 1e999}', "from 1 to 300", id="infinity"),
        pytest.param("highlights", '{"segment_seconds": NaN}', "from 1 to 300", id="nan"),
        pytest.param(
            "highlights",
            '{"segment_seconds": 1' + "0" * 400 + "}",
            "from 1 to 300",
            id="int-too-big-for-a-float",
        ),
        pytest.param("highlights", "[" * 50_000, "not valid JSON", id="nested-50000-deep"),
        pytest.param(
            "workout", '{"exercise_hint": "' + "x" * 201 + '"}', "at most 200", id="hint-too-long"
        ),
        pytest.param(
            "workout", '{"min_significance": 4}', "allowed: exercise_hint", id="unknown-key"
        ),
        pytest.param(
            "highlights", '{"__proto__": {}}', "allowed: frames_per_segment", id="proto-key"
        ),
        pytest.param(None, '{"segment_seconds": 5}', "need an analysis_type", id="no-type"),
    ],
)
async def test_bad_params_are_a_400_saying_what_to_fix(
    target, sample_video, analysis_type, params, fragment
):
    fields = {"params": params.encode()}
    if analysis_type is not None:
        fields["analysis_type"] = analysis_type.encode()
    answer = await upload_refused(target, 400, upload_body(sample_video.read_bytes(), **fields))
    assert answer["error"] == "Invalid parameters" and fragment in answer["message"], answer


@pytest.mark.parametrize(
    "analysis_type",
    [
        pytest.param("dance", id="unknown"),
        pytest.param("", id="empty"),
        pytest.param("HIGHLIGHTS", id="upper-case"),
        pytest.param("highlights\u200b", id="zero-width-space"),
        pytest.param(
            "\uff48\uff49\uff47\uff48\uff4c\uff49\uff47\uff48\uff54\uff53", id="fullwidth"
        ),
        pytest.param("highlights\x00", id="nul"),
        pytest.param("workout\u202e", id="bidi-override"),
        pytest.param("\U0001f3cb\ufe0f", id="emoji"),
        pytest.param("w" * 10_000, id="10k-chars"),
    ],
)
async def test_an_unknown_analysis_type_is_a_400_naming_the_valid_ones(
    target, sample_video, analysis_type
):
    body = upload_body(sample_video.read_bytes(), analysis_type=analysis_type.encode())
    answer = await upload_refused(target, 400, body)
    assert "highlights or workout" in answer["message"]


@pytest.mark.parametrize(
    "fields, fragment",
    [
        pytest.param(
            {"params": b"{}", "min_significance": b"4"}, "not both", id="params-and-fields"
        ),
        pytest.param({"colour": b"red"}, "allowed: frames_per_segment", id="unknown-field"),
        pytest.param({"max_highlights": b"1" + b"0" * 400}, "from 1 to 100", id="huge-int"),
        pytest.param({"min_significance": b"[" * 20_000}, "min_significance", id="nested"),
    ],
)
async def test_the_legacy_routes_refuse_bad_form_params_with_a_400(
    target, sample_video, fields, fragment
):
    body = upload_body(sample_video.read_bytes(), **fields)
    answer = await upload_refused(target, 400, body, "/analyze/highlights")
    assert fragment in answer["message"], answer


@pytest.mark.parametrize(
    "content_type, body, fragment",
    [
        pytest.param("application/json", b"[1]", "JSON object", id="json-array"),
        pytest.param("application/json", b"{oops", "not valid JSON", id="not-json"),
        pytest.param("application/json", b"[" * 100_000, "not valid JSON", id="nested-deep"),
        pytest.param("application/json; charset=bogus", b"{}", "not valid JSON", id="bad-charset"),
        pytest.param(
            "application/json",
            b'{"analysis_type": "workout", "params": {"exercise_hint": "'
            + b"x" * 1_000_000
            + b'"}}',
            "at most 200",
            id="1-MB-hint",
        ),
        pytest.param(
            "application/json",
            b'{"analysis_type": ["highlights"]}',
            "highlights or workout",
            id="type-not-a-string",
        ),
        pytest.param(
            "application/x-www-form-urlencoded; charset=bogus",
            b"analysis_type=highlights",
            "cannot be read",
            id="form-bad-charset",
        ),
        pytest.param("multipart/form-data", b"garbage", "cannot be read", id="form-no-boundary"),
        pytest.param(MULTIPART["Content-Type"], b"garbage", "cannot be read", id="form-garbage"),
        pytest.param(
            MULTIPART["Content-Type"],
            b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="a"\r\n'
            b"\0\r\n\r\nx\r\n--" + BOUNDARY.encode() + b"--\r\n",
            "cannot be read",
            id="form-nul-header",
        ),
        pytest.param("text/plain", b"highlights", "analysis_type is required", id="text"),
    ],
)
async def test_analyze_with_a_body_it_cannot_use_is_a_400_and_the_session_waits_on(
    target, content_type, body, fragment
):
    answer = await refused(
        target,
        400,
        "POST",
        f"{V1}/analyze/{target.waiting}",
        data=io.BytesIO(body),
        headers={"Content-Type": content_type},
    )
    assert fragment in answer["message"], answer
    status = await target.request("GET", f"{V1}/status/{target.waiting}")
    assert status.json()["status"] == "uploaded"


# ---- ids, methods, keys on every route -----------------------------------------------------

SOME_UUID4 = "3f0e2a4c-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
MALFORMED_IDS = [
    "nope",
    "12345",
    "550e8400-e29b-11d4-a716-446655440000",  # a UUID, but version 1
    "00000000-0000-0000-0000-000000000000",  # the nil UUID
    "%7B" + SOME_UUID4 + "%7D",  # braced
    "urn:uuid:" + SOME_UUID4,
    SOME_UUID4.replace("-", ""),
    SOME_UUID4 + "%20",
    "%E2%80%8B" + SOME_UUID4,  # a zero-width space first
    SOME_UUID4.replace("-", "%E2%80%90"),  # Unicode hyphens
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "%FF%FE",
    "%F0%9F%92%A9",
    "a" * 4000,
]


@pytest.mark.parametrize("method, route", ID_ROUTES)
async def test_a_path_id_that_is_not_a_uuid4_is_a_400_on_every_route(target, method, route):
    """API.md: a path id that is not a UUID is a 400. Only UUID4 strings are ids here
    (the server makes only those); upper case is the same UUID and is accepted."""
    for bad in MALFORMED_IDS:
        answer = await refused(target, 400, method, route.format(id=bad), json={})
        assert answer["error"] == "Invalid session id", (bad, answer)


@pytest.mark.parametrize("method, route", ID_ROUTES)
async def test_an_unknown_id_is_a_404_on_every_route_in_either_case(target, method, route):
    for unknown in (str(uuid.uuid4()), str(uuid.uuid4()).upper()):
        answer = await refused(
            target, 404, method, route.format(id=unknown), json={"analysis_type": "highlights"}
        )
        assert answer["sessionId"] == unknown.lower() and answer["error"] == "Session not found"


# Every path the route table declares, with its methods; a test below checks the router.
ROUTE_METHODS: dict[str, set[str]] = {}
for _route in API_ROUTES:
    ROUTE_METHODS.setdefault(_route.path, set()).add(_route.method)
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND")


def concrete(route: str, session_id: str = SOME_UUID4) -> str:
    return route.format(sessionId=session_id, uploadId=session_id, n="0", format="otio")


async def test_the_router_serves_exactly_the_route_tables_paths_and_methods(target):
    served: dict[str, set[str]] = {}
    for route in target.app.router.routes():
        if route.method != "HEAD":
            served.setdefault(route.resource.canonical, set()).add(route.method)
    assert served == ROUTE_METHODS


@pytest.mark.parametrize("route", sorted(ROUTE_METHODS))
async def test_a_wrong_method_is_a_json_405_naming_the_allowed_ones(target, route):
    for method in sorted(set(METHODS) - ROUTE_METHODS[route]):
        before = target.tree()
        answer = await target.request(method, concrete(route))
        body = assert_json_error(target, answer, 405)
        allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
        assert ROUTE_METHODS[route] <= allowed, (method, route, allowed)
        assert method in body["message"], body
        await assert_unharmed(target, before)


QUERY_KEY_ROUTES = {
    f"{V1}/events/{{sessionId}}",
    f"{V1}/results/{{sessionId}}/video",
    f"{V1}/results/{{sessionId}}/chapters.vtt",
}
PROTECTED = sorted(route for route in ROUTE_METHODS if route not in PUBLIC)
BAD_CREDENTIALS = [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": KEY},
    {"Authorization": "Bearer "},
    {"X-Api-Key": KEY},
]


@pytest.mark.parametrize("route", PROTECTED)
async def test_a_missing_or_wrong_api_key_is_a_401_on_every_protected_route(keyed, route):
    """/metrics included: API_KEY leaves only /, /health and the OpenAPI document open."""
    for method in sorted(ROUTE_METHODS[route]):  # a resumable upload's path has several
        for headers in BAD_CREDENTIALS:
            answer = await refused(keyed, 401, method, concrete(route), headers=headers)
            assert answer["error"] == "Unauthorized"
        if route not in QUERY_KEY_ROUTES:
            # Only EventSource, <video> and <track>, which cannot send headers, may put the
            # key in the query.
            await refused(keyed, 401, method, concrete(route) + f"?access_token={KEY}")


async def test_the_route_table_makes_public_exactly_what_api_md_leaves_open():
    assert {route.path for route in API_ROUTES if route.public} == PUBLIC


async def test_the_public_routes_need_no_key_and_the_right_key_opens_metrics(keyed):
    for path in sorted(PUBLIC):
        assert (await keyed.request("GET", path)).status == 200, path
    answer = await keyed.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status == 200 and b"smolvlm_sessions" in answer.body


# ---- artifacts, list, events: bad numbers and headers -------------------------------------


@pytest.mark.parametrize(
    "n, status",
    [
        ("-1", 400),
        ("x", 400),
        ("1e3", 400),
        ("0x1", 400),
        ("+1", 400),
        ("%200", 400),
        ("%00", 400),
        ("%EF%BC%90", 400),  # a fullwidth zero: a digit to str.isdigit, not an index
        ("%FF", 400),
        ("..%2F..%2Freel.mp4", 400),
        ("1", 404),  # the session has one highlight
        ("99999999999999999999", 404),
        ("9" * 5000, 400),  # past int()'s 4300-digit guard: no index at all
    ],
)
async def test_a_thumbnail_number_that_is_not_an_index_is_a_400_or_a_404(target, n, status):
    await refused(target, status, "GET", f"{V1}/results/{target.done}/thumbnails/{n}")


@pytest.mark.parametrize(
    "value",
    [
        "bytes=abc",
        "bytes=999999999-",
        "bytes=5-1",
        "items=0-1",
        "bytes=-0",
        "bytes=0-1,2-3",
        "bytes=--1",
        "bytes=99999999999999999999999-",
        "bytes=0-99999999999999999999999999",
        "bytes=-99999999999999999999999999",
        "bytes=1-2-3",
        "bytes=",
        "",
        "bytes=\u00e9",
    ],
)
async def test_range_garbage_on_the_reel_is_ignored_or_a_416_never_a_5xx(target, value):
    before = target.tree()
    answer = await target.request(
        "GET", f"{V1}/results/{target.done}/reel", headers={"Range": value}
    )
    assert answer.status in (200, 206, 416), (value, answer.status)
    assert_no_leak(target, answer)
    await assert_unharmed(target, before)


@pytest.mark.parametrize(
    "query",
    [
        "status=done",
        "status=COMPLETED",
        "status=completed%00",
        "status=%F0%9F%92%A9",
        "limit=0",
        "limit=-1",
        "limit=x",
        "limit=1001",
        "limit=1e3",
        "limit=1.5",
        "limit=%EF%BC%99",
        "limit=999999999999999999999999",
        "limit=" + "9" * 5000,
    ],
)
async def test_a_bad_status_or_limit_on_the_list_is_a_400_saying_the_allowed_values(target, query):
    answer = await refused(target, 400, "GET", f"{V1}/sessions?{query}")
    message = answer["message"]
    assert "must be" in message
    if query.startswith("status="):
        assert all(status.value in message for status in SessionStatus), message
    else:
        assert f"from 1 to {MAX_LIST_LIMIT}" in message, message


@pytest.mark.parametrize(
    "query, named",
    [
        ("limit=", "limit"),
        ("status=", "status"),
        ("limit=5&limit=abc", "limit"),
        ("limit=5&limit=5", "limit"),
        ("status=failed&status=bogus", "status"),
        ("status=completed&limit=", "limit"),
    ],
)
async def test_an_empty_or_repeated_filter_on_the_list_is_a_400_naming_it(target, query, named):
    """A schema fuzzer found these taken as a 200: only the first value was checked."""
    answer = await refused(target, 400, "GET", f"{V1}/sessions?{query}")
    assert f"Query parameter {named} is" in answer["message"], answer


# Every query parameter of the route table, on its route (a known session where it has one).
QUERY_PARAMETERS = [
    (route.method, route.path, name) for route in API_ROUTES for name in route.query_names
]


@pytest.mark.parametrize(
    "method, route, name", QUERY_PARAMETERS, ids=[f"{p} {n}" for _, p, n in QUERY_PARAMETERS]
)
@pytest.mark.parametrize("how", ["empty", "repeated"])
async def test_every_query_parameter_empty_or_repeated_is_a_400_naming_it(
    target, method, route, name, how
):
    path = concrete(route, target.done)
    query = f"{name}=" if how == "empty" else f"{name}=1&{name}=2"
    answer = await refused(target, 400, method, f"{path}?{query}")
    assert f"Query parameter {name} is" in answer["message"], answer


async def test_an_unknown_query_parameter_is_ignored(target):
    """API.md: a query parameter a route does not take changes nothing."""
    answer = await target.request("GET", f"{V1}/sessions?limit=1&bogus=&bogus=2")
    assert answer.status == 200 and answer.json()["count"] == 1
    answer = await target.request("GET", f"{V1}/status/{target.done}?limit=x")
    assert answer.status == 200 and answer.json()["status"] == "completed"


@pytest.mark.parametrize("value", ["abc", "-5", "1e9", "0x10", "1.5", "1" * 19, "9" * 5000])
@pytest.mark.parametrize("where", ["header", "query"])
async def test_a_garbage_last_event_id_is_a_400(target, value, where):
    path, headers = f"{V1}/events/{target.done}", {}
    if where == "header":
        headers["Last-Event-ID"] = value
    else:
        path += f"?lastEventId={value}"
    answer = await refused(target, 400, "GET", path, headers=headers)
    assert "Last-Event-ID" in answer["message"]


# ---- and afterwards ------------------------------------------------------------------------


async def test_after_all_of_this_no_answer_was_a_5xx_and_a_normal_upload_completes(
    target, sample_video
):
    """Runs last: the server that took every case above still does its job."""
    fields = {"analysis_type": b"workout"}
    session_id = await good_upload(target, sample_video.read_bytes(), fields=fields)
    session = await target.app[keys.RUNNER].wait(session_id)
    assert session.status.value == "completed"
    results = await target.request("GET", f"{V1}/results/{session_id}")
    assert results.status == 200 and results.json()["results"]["analysisType"] == "workout"
    assert_no_leak(target, results)
    metrics = await target.request("GET", "/metrics")
    assert metrics.status == 200
    assert b"smolvlm_upload_bytes_total" in metrics.body
    server_errors = [entry for entry in target.statuses if entry[2] >= 500]
    assert server_errors == []
