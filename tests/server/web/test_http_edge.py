"""The edge of every request: JSON errors, CORS, the API key, health, index and OpenAPI."""

from __future__ import annotations

import io
import logging
import uuid

import pytest
from aiohttp import web

from protocol import model_display_name
from server.app import create_app
from server.version import VERSION
from tests.server.http_helpers import V1, make_config, start, upload_id, video_form

# The whole v1 HTTP behaviour, on SQLite and on Redis.
pytestmark = pytest.mark.usefixtures("backend")

KEY = "s3cret-key"
ORIGIN = "https://app.example.com"
PUBLIC = {"/", "/favicon.ico", "/static/tus.min.js", "/health", "/api/v1/openapi.json"}


def concrete(path: str) -> str:
    some_id = str(uuid.uuid4())
    return path.format(sessionId=some_id, uploadId=some_id, n="0", format="otio")


def every_route(app: web.Application) -> list[tuple[str, str]]:
    """(method, concrete path) of every route the app serves, HEAD aside."""
    return [
        (route.method, concrete(route.resource.canonical))
        for route in app.router.routes()
        if route.method != "HEAD"
    ]


# ---- JSON errors --------------------------------------------------------------------------


async def test_an_unknown_route_is_a_json_404(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    response = await client.get("/api/v1/nothing-here")
    assert response.status == 404
    assert await response.json() == {
        "error": "Not Found",
        "message": "No endpoint at /api/v1/nothing-here",
        "code": 404,
    }


async def test_a_wrong_method_is_a_json_405_with_allow(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    response = await client.put(f"{V1}/upload")
    body = await response.json()
    assert response.status == 405 and body["error"] == "Method Not Allowed"
    assert body["code"] == 405 and "POST" in response.headers["Allow"]


async def test_an_unexpected_exception_is_a_generic_json_500_logged_with_traceback(
    aiohttp_client, tmp_path, caplog
):
    """The client sees no stack trace and no server path; the log has both."""
    app = create_app(make_config(tmp_path))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("cannot open /srv/secret/path")

    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR):
        response = await client.get("/broken")
    text = await response.text()
    assert response.status == 500
    assert "/srv/secret" not in text and "Traceback" not in text
    assert (await response.json())["error"] == "Internal server error"
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and "/srv/secret/path" in str(logged[0].exc_info[1])


async def test_a_json_body_over_the_client_limit_is_a_json_413(
    aiohttp_client, tmp_path, sample_video
):
    """aiohttp's own refusal (client_max_size) leaves as JSON like every other error."""
    client = await start(aiohttp_client, tmp_path)
    session_id = await upload_id(client, sample_video)
    response = await client.post(
        f"{V1}/analyze/{session_id}",
        data=io.BytesIO(b"{" + b" " * (2 * 1024 * 1024) + b"}"),
        headers={"Content-Type": "application/json"},
    )
    body = await response.json()
    assert response.status == 413 and body["code"] == 413 and body["error"]


# ---- CORS ---------------------------------------------------------------------------------


async def test_a_preflight_from_an_allowed_origin_is_answered(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, cors_origins=(ORIGIN,), api_key=KEY)
    response = await client.options(
        f"{V1}/upload",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = response.headers["Access-Control-Allow-Headers"]
    for header in ("Authorization", "Content-Type", "Last-Event-ID"):
        assert header in allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "DELETE" in response.headers["Access-Control-Allow-Methods"]


async def test_a_preflight_from_another_origin_is_refused(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, cors_origins=(ORIGIN,))
    response = await client.options(
        f"{V1}/upload",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_responses_echo_an_allowed_origin_and_expose_location(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path, cors_origins=(ORIGIN,))
    response = await client.get("/health", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Location" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers["Vary"]
    error = await client.get(f"{V1}/status/nope", headers={"Origin": ORIGIN})
    assert error.status == 400 and error.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_streamed_responses_carry_cors_headers_too(aiohttp_client, tmp_path, sample_video):
    client = await start(aiohttp_client, tmp_path, cors_origins=(ORIGIN,))
    session_id = await upload_id(client, sample_video)
    response = await client.get(f"{V1}/events/{session_id}", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    response.close()


async def test_a_star_origin_allows_any_origin(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, cors_origins=("*",))
    response = await client.get("/health", headers={"Origin": "http://localhost:3000"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_without_cors_origins_no_cors_headers_are_sent(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    response = await client.get("/health", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


# ---- API key ------------------------------------------------------------------------------


async def test_with_an_api_key_no_route_is_open_but_the_public_ones(aiohttp_client, tmp_path):
    """Walks the router itself, so a route added later cannot be left unguarded by mistake."""
    client = await start(aiohttp_client, tmp_path, api_key=KEY)
    routes = every_route(client.app)
    assert len(routes) >= 17
    for method, path in routes:
        response = await client.request(method, path)
        if path in PUBLIC:
            assert response.status == 200, (method, path)
            continue
        body = await response.json()
        assert response.status == 401, (method, path, body)
        assert body["error"] == "Unauthorized" and body["code"] == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_with_the_right_key_every_route_gets_past_the_check(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, api_key=KEY)
    for method, path in every_route(client.app):
        response = await client.request(method, path, headers={"Authorization": f"Bearer {KEY}"})
        assert response.status != 401, (method, path)


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {KEY}x", f"Basic {KEY}", KEY, "Bearer", "Bearer  ", "Bearer caf\u00e9"],
)
async def test_a_wrong_or_malformed_key_is_a_401(aiohttp_client, tmp_path, authorization):
    client = await start(aiohttp_client, tmp_path, api_key=KEY)
    response = await client.get(f"{V1}/sessions", headers={"Authorization": authorization})
    assert response.status == 401


async def test_the_access_token_query_works_only_where_a_browser_cannot_send_headers(
    aiohttp_client, tmp_path, sample_video
):
    """EventSource, <video> and <track> cannot send headers: only the events, video and
    chapters routes take ?access_token=."""
    client = await start(aiohttp_client, tmp_path, api_key=KEY)
    auth = {"Authorization": f"Bearer {KEY}"}
    response = await client.post(
        f"{V1}/upload",
        data=video_form(sample_video),
        headers=auth,
    )
    session_id = (await response.json())["sessionId"]
    events = await client.get(f"{V1}/events/{session_id}?access_token={KEY}")
    assert events.status == 200
    events.close()
    wrong = await client.get(f"{V1}/events/{session_id}?access_token=nope")
    assert wrong.status == 401
    status = await client.get(f"{V1}/status/{session_id}?access_token={KEY}")
    assert status.status == 401
    video = await client.get(f"{V1}/results/{session_id}/video?access_token={KEY}")
    assert video.status == 200 and await video.read() == sample_video.read_bytes()
    assert (await client.get(f"{V1}/results/{session_id}/video?access_token=no")).status == 401


async def test_a_preflight_needs_no_api_key(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, api_key=KEY, cors_origins=(ORIGIN,))
    response = await client.options(
        f"{V1}/sessions", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert response.status == 204


# ---- service routes -----------------------------------------------------------------------


async def test_health_reports_model_counts_and_version(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, model="/models/my-local-smolvlm")
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {
        "status": "healthy",
        "model": model_display_name("/models/my-local-smolvlm"),
        "modelState": "unknown",  # no warm worker, no job yet: nothing is known of it
        "modelError": None,
        "running": 0,
        "queued": 0,
        "version": VERSION,
    }
    assert "/models" not in await response.text()


async def test_the_index_lists_every_endpoint(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    body = await (await client.get("/")).json()
    assert body["service"] == "smolvlm-video-server" and body["version"] == VERSION
    listed = {(e["method"], e["path"]) for e in body["endpoints"]}
    assert ("POST", f"{V1}/upload") in listed
    assert ("GET", f"{V1}/status/{{sessionId}}") in listed
    assert ("GET", f"{V1}/results/{{sessionId}}/thumbnails/{{n}}") in listed
    assert ("POST", "/analyze/workout") in listed
    assert all(entry["summary"] for entry in body["endpoints"])
    # One route table: the index says of each route what the OpenAPI document says.
    document = await (await client.get("/api/v1/openapi.json")).json()
    for entry in body["endpoints"]:
        operation = document["paths"][entry["path"]][entry["method"].lower()]
        assert entry["summary"] == operation["summary"], entry


async def test_the_favicon_is_an_svg_served_without_the_key(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, api_key=KEY)
    response = await client.get("/favicon.ico")
    assert response.status == 200 and response.content_type == "image/svg+xml"
    assert (await response.text()).startswith('<svg xmlns="http://www.w3.org/2000/svg"')


async def test_openapi_describes_every_route(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    document = await (await client.get("/api/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        operations = document["paths"][route.resource.canonical]
        assert route.method.lower() in operations, route.resource.canonical


async def test_every_get_route_answers_head_as_well(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    for path in ("/", "/health", "/favicon.ico", "/api/v1/openapi.json", f"{V1}/sessions"):
        response = await client.head(path)
        assert response.status == 200, path
