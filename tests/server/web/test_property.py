"""Property-based: whatever schemathesis generates from the served OpenAPI document, valid
or not, no operation answers a 5xx, no answer shows a server path or a traceback, and
every answer is one the document promises: its status code, content type, headers and
body schema. A request the document calls valid is not refused (positive data
acceptance), except where the document cannot say what is valid: a video's bytes and
params as JSON text in a form field (`PARTLY_DESCRIBED`).

Why schemathesis rather than bare hypothesis: it is the maintained tool for exactly this
(OpenAPI 3.1, path/query/header parameters, JSON, form and multipart bodies, and the
negative mode that breaks each of them on purpose), and its strategies are plain
hypothesis strategies. Its ASGI/WSGI shortcuts do not fit aiohttp, so the real app is
served on a loopback port by an event loop in a thread (schemathesis calls with the
blocking `requests`), and each operation is driven here with `hypothesis.given` over
`operation.as_strategy(...)` rather than through its pytest plugin: one test per
operation, derandomized (the same examples every run: no flaky `make test`), with no
example database written into the checkout.

Besides random ids (404s), the known-session strategy fixes `sessionId` to real
sessions - completed (with a reel and a thumbnail), uploaded, cancelled - so the
artifact, analyze, cancel and cleanup paths are fuzzed too. A failed session is left
out on purpose: its `results` is API.md's 500 "Analysis failed".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.config import Config
from server.web import app_keys as keys
from server.web.openapi import openapi_document
from server.web.routes import API_ROUTES
from server.web.tus import OFFSET_STREAM
from tests.server.http_helpers import V1, make_config

# Per operation and kind of input (46 runs); most answers take a millisecond, uploads probe.
EXAMPLES_PER_RUN = 25
# Bounds against hangs only.
START_BOUND_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0
# A stream of an unfinished session stays open: schemathesis reads one event, or this long.
STREAM_SECONDS = 1.0
# Every answer is checked against the document with these.
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Operations whose valid-looking input the server may still refuse, for a reason no schema
# can state: the upload's file must really be a short video (415, 422), and a form's
# `params` is JSON text that must hold known keys (400). Every other operation must take
# every request the document calls valid.
FORM = "application/x-www-form-urlencoded"
# API.md answers a results (or artifact) request about a session that did not complete
# with a 400 naming why: a valid request, refused for the session's state.
REFUSED_FOR_STATE = {"Results not ready", "Session was cancelled"}
PARTLY_DESCRIBED = {
    ("POST", "/api/v1/video/upload"),
    # A resumable upload's Upload-Length has a limit that is a setting (MAX_UPLOAD_MB),
    # and its metadata carries the same params JSON text.
    ("POST", "/api/v1/video/uploads/"),
    ("POST", "/analyze/highlights"),
    ("POST", "/analyze/workout"),
}
# A resumable upload's PATCH body is raw bytes, which schemathesis makes with this.
schemathesis.openapi.media_type(OFFSET_STREAM, st.binary(max_size=256))
# Every route of the table, as the document describes it.
DOCUMENT = openapi_document(API_ROUTES)
OPERATIONS = sorted((route.method, route.path) for route in API_ROUTES)


class LoopbackServer:
    """The app on 127.0.0.1, run by its own event loop in a thread until `stop`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = ""
        self.app: web.Application | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    def start(self) -> LoopbackServer:
        self._thread.start()
        assert self._ready.wait(START_BOUND_SECONDS), "the server did not start"
        return self

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self.app = create_app(self.config)
        runner = web.AppRunner(self.app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run `coroutine` on the server's loop and return its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(REQUEST_TIMEOUT_SECONDS)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(START_BOUND_SECONDS)
        assert not self._thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory) -> None:
    """Hypothesis keeps caches in ./.hypothesis by default; not in the checkout, please."""
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis-home"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_backend) -> Iterator[LoopbackServer]:
    """The app on SQLite, then on Redis: every run below is made against each."""
    server = LoopbackServer(make_config(tmp_path_factory.mktemp("property"), max_upload_mb=1))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_schema(served):
    """The document as the server serves it, with requests aimed at that server."""
    config = SchemathesisConfig()  # not discovered: no schemathesis.toml decides for us
    config.projects.default.update(base_url=served.url, request_timeout=REQUEST_TIMEOUT_SECONDS)
    config.projects.default.max_stream_events = 1
    return schemathesis.openapi.from_url(f"{served.url}/api/v1/openapi.json", config=config)


@pytest.fixture
def known_sessions(served, sample_video) -> list[str]:
    """A completed, an uploaded and a cancelled session, made fresh for each run."""
    with requests.Session() as http:

        def upload(filename: str, **fields: str) -> str:
            with sample_video.open("rb") as video:
                response = http.post(
                    f"{served.url}{V1}/upload",
                    files={"file": (filename, video, "video/mp4")},
                    data=fields,
                    timeout=REQUEST_TIMEOUT_SECONDS,
                )
            assert response.status_code == 202, response.text
            return response.json()["sessionId"]

        completed = upload("clip.mp4", analysis_type="highlights")
        uploaded = upload("clip.mp4")
        cancelled = upload("hang.mp4", analysis_type="workout")
        cancel = http.post(f"{served.url}{V1}/cancel/{cancelled}", timeout=REQUEST_TIMEOUT_SECONDS)
        assert cancel.status_code == 200
    assert served.app is not None
    served.run(served.app[keys.RUNNER].wait(completed))
    return [completed, uploaded, cancelled]


def cases(operation, kind: str, known: list[str]) -> st.SearchStrategy:
    """`valid`: requests the document allows (random ids: mostly 404s); `invalid`: each
    part broken on purpose; `known-ids`: valid requests about the real sessions."""
    if kind == "invalid":
        return operation.as_strategy(GenerationMode.NEGATIVE)
    if kind == "known-ids":
        return st.sampled_from(known).flatmap(
            lambda session_id: operation.as_strategy(
                GenerationMode.POSITIVE, path_parameters={"sessionId": session_id}
            )
        )
    return operation.as_strategy(GenerationMode.POSITIVE)


def refused_for_state(response: requests.Response) -> bool:
    """Whether this is API.md's 400 for results of a session that did not complete."""
    if response.status_code != 400:
        return False
    return response.json().get("error") in REFUSED_FOR_STATE


def refused_webhook(response: requests.Response) -> bool:
    """Whether this is the 400 for a `webhook_url`: this server has no WEBHOOK_SECRET (and
    must not look up the generated hosts), so every well-formed URL is refused too."""
    return response.status_code == 400 and response.json()["message"].startswith("webhook_url")


def kinds(method: str, path: str) -> list[str]:
    """Every operation gets valid input; `invalid` where it takes any input to break, and
    `known-ids` where its path has a session id."""
    operation = DOCUMENT["paths"][path][method.lower()]
    found = ["valid"]
    if "parameters" in operation or "requestBody" in operation:
        found.append("invalid")
    if "{sessionId}" in path:
        found.append("known-ids")
    return found


RUNS = [(kind, method, path) for method, path in OPERATIONS for kind in kinds(method, path)]


@pytest.mark.parametrize("kind, method, path", RUNS, ids=[f"{k} {m} {p}" for k, m, p in RUNS])
def test_every_generated_request_gets_an_answer_the_document_promises_and_no_server_path(
    served, api_schema, request, kind, method, path
):
    operation = api_schema[path][method]
    known = request.getfixturevalue("known_sessions") if kind == "known-ids" else []
    root = str(served.config.data_dir.parent)
    timeout = STREAM_SECONDS if "/events/" in path else REQUEST_TIMEOUT_SECONDS
    must_accept = kind != "invalid" and (method, path) not in PARTLY_DESCRIBED

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_RUN,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(operation, kind, known))
    def check(case) -> None:
        response = case.call(base_url=served.url, timeout=timeout)
        shown = f"{case.method} {case.formatted_path} -> {response.status_code}"
        assert response.status_code < 500, f"{shown}: {response.text[:500]}"
        text = response.content.decode("utf-8", "replace")
        assert root not in text and "Traceback" not in text, f"{shown}: {text[:500]}"
        # A form's `params` is JSON text (see PARTLY_DESCRIBED); a JSON body's is an object.
        refused = refused_for_state(response) or refused_webhook(response)
        if must_accept and case.media_type != FORM and not refused:
            case.validate_response(response, checks=[*CONFORMANCE, positive_data_acceptance])
        else:
            case.validate_response(response, checks=CONFORMANCE)

    check()


def test_the_operations_fuzzed_are_every_route_the_server_serves(served, api_schema):
    assert served.app is not None
    routes = {
        (route.method, route.resource.canonical)
        for route in served.app.router.routes()
        if route.method != "HEAD"
    }
    assert routes == set(OPERATIONS)
    for method, path in OPERATIONS:
        assert api_schema[path][method].path == path
