"""Webhooks: a session's end is POSTed, signed the Standard Webhooks way, retried until a
receiver takes it, kept across a kill -9 of the server; private receivers are refused."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
import redis

from server.config import Config
from server.jobs.webhook_claims import CLAIM_KEY, UNFINISHED_KEY, MemoryDeliveryClaims
from server.jobs.webhooks import WebhookDeliverer, address_allowed
from server.state.models import SessionStatus, utcnow
from server.state.webhook_delivery import DeliveryState, WebhookDelivery
from server.web import app_keys as keys
from tests.server.conftest import eventually, new_session
from tests.server.http_helpers import (
    V1,
    finished,
    start,
    until_running,
    upload,
    upload_id,
    video_form,
)
from tests.server.server_process import ServerProcess
from tests.server.webhook_receiver import SECRET, receiver

__all__ = ["receiver"]  # the fixture

# Retries in tests come fast; production waits seconds to minutes.
FAST = {
    "webhook_secret": SECRET,
    "webhook_allow_private": True,
    "webhook_first_retry_seconds": 0.05,
}
# Bounds against hangs only.
WAIT_SECONDS = 30.0
RESTART_WAIT_SECONDS = 60.0


async def webhook_of(client, session_id: str, *, done: str = "delivered") -> dict[str, Any]:
    """The status body's `webhook` once its state is `done`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        body = await (await client.get(f"{V1}/status/{session_id}")).json()
        if body["webhook"]["state"] == done:
            return body["webhook"]
        assert loop.time() < deadline, body
        await asyncio.sleep(0.02)


@pytest.mark.usefixtures("backend")
async def test_every_end_is_posted_once_with_a_signature_the_library_verifies(
    aiohttp_client, tmp_path, sample_video, receiver
):
    """Completed, failed and cancelled alike; the payload is the session's status body.
    Alone (memory claims) and as a node on Redis (claims in Redis) the same."""
    client = await start(aiohttp_client, tmp_path, **FAST)
    hook = {"webhook_url": receiver.url}
    completed = await upload_id(client, sample_video, analysis_type="highlights", **hook)
    failed = await upload_id(client, sample_video, "fail.mp4", analysis_type="highlights", **hook)
    cancelled = await upload_id(client, sample_video, "hang.mp4", analysis_type="workout", **hook)
    await until_running(client, cancelled)
    assert (await client.post(f"{V1}/cancel/{cancelled}")).status == 200
    for session_id in (completed, failed, cancelled):
        await finished(client, session_id)
        webhook = await webhook_of(client, session_id)
        assert webhook["url"] == receiver.url and webhook["attempts"] == 1
        assert webhook["lastStatus"] == 204 and webhook["lastError"] is None
        assert webhook["deliveredAt"].endswith("Z")
    by_id = {got["headers"]["webhook-id"]: got["payload"] for got in receiver.received}
    assert len(receiver.received) == 3 and set(by_id) == {completed, failed, cancelled}
    for session_id, status in (
        (completed, "completed"),
        (failed, "failed"),
        (cancelled, "cancelled"),
    ):
        body = await (await client.get(f"{V1}/status/{session_id}")).json()
        del body["webhook"]
        assert by_id[session_id] == body and body["status"] == status


async def test_a_receiver_failing_twice_gets_the_event_once_it_recovers(
    aiohttp_client, tmp_path, sample_video, receiver, backend, request
):
    """On Redis, the claim held through the retries is gone once the delivery is over."""
    receiver.answers = [500, 503, 200]
    client = await start(aiohttp_client, tmp_path, **FAST)
    session_id = await upload_id(
        client, sample_video, analysis_type="highlights", webhook_url=receiver.url
    )
    webhook = await webhook_of(client, session_id)
    assert webhook["attempts"] == 3 and webhook["lastStatus"] == 200
    # The same message each time (same id, same body), freshly signed for each attempt.
    assert len(receiver.received) == 3
    assert {got["headers"]["webhook-id"] for got in receiver.received} == {session_id}
    assert len({json.dumps(got["payload"]) for got in receiver.received}) == 1
    # Delivered means done: the retry delay passes several times and nothing more comes.
    await asyncio.sleep(0.5)
    assert len(receiver.received) == 3
    if backend == "redis":
        with redis.Redis.from_url(request.getfixturevalue("redis_url")) as shared:
            assert await eventually(lambda: not shared.exists(CLAIM_KEY + session_id))
            assert shared.zcard(UNFINISHED_KEY) == 0


async def test_a_redirect_is_not_followed_and_retries_end_with_the_window(
    aiohttp_client, tmp_path, sample_video, receiver
):
    receiver.answers = [307]
    client = await start(aiohttp_client, tmp_path, **FAST, webhook_retry_seconds=0.5)
    session_id = await upload_id(
        client, sample_video, analysis_type="highlights", webhook_url=receiver.url
    )
    webhook = await webhook_of(client, session_id, done="failed")
    assert webhook["lastStatus"] == 307 and "redirects are not followed" in webhook["lastError"]
    assert webhook["attempts"] >= 2 and webhook["deliveredAt"] is None
    assert receiver.redirected_to == 0


async def test_the_two_step_flow_takes_the_webhook_with_analyze(
    aiohttp_client, tmp_path, sample_video, receiver
):
    client = await start(aiohttp_client, tmp_path, **FAST)
    session_id = await upload_id(client, sample_video)
    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    assert status["webhook"] is None
    response = await client.post(
        f"{V1}/analyze/{session_id}",
        json={"analysis_type": "highlights", "webhook_url": receiver.url},
    )
    assert response.status == 202
    await webhook_of(client, session_id)
    assert [got["payload"]["status"] for got in receiver.received] == ["completed"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
async def test_a_receiver_at_a_private_address_is_refused_and_nothing_is_kept(
    aiohttp_client, tmp_path, sample_video, url
):
    client = await start(aiohttp_client, tmp_path, webhook_secret=SECRET)
    response = await upload(client, sample_video, analysis_type="highlights", webhook_url=url)
    body = await response.json()
    assert response.status == 400, body
    assert "loopback, private, link-local" in body["message"]
    assert "WEBHOOK_ALLOW_PRIVATE=1" in body["message"]
    assert (await (await client.get(f"{V1}/sessions")).json())["count"] == 0
    assert not any(client.app[keys.PATHS].root.joinpath("uploads").iterdir())
    # And in the two-step flow, where analyze carries the URL.
    waiting = await upload_id(client, sample_video)
    response = await client.post(
        f"{V1}/analyze/{waiting}", json={"analysis_type": "highlights", "webhook_url": url}
    )
    assert response.status == 400
    status = await (await client.get(f"{V1}/status/{waiting}")).json()
    assert status["status"] == "uploaded" and status["webhook"] is None


async def test_a_receiver_name_that_leads_to_a_private_address_at_delivery_is_not_called(
    aiohttp_client, tmp_path, sample_video, receiver
):
    """The resolver checks again on every connection: a name accepted while it pointed
    somewhere public and now points at loopback (DNS rebinding) gets no request."""
    client = await start(aiohttp_client, tmp_path, webhook_secret=SECRET, webhook_retry_seconds=0.3)
    session_id = await upload_id(client, sample_video)
    rebound = receiver.url.replace("127.0.0.1", "localhost")
    # As if vetted earlier, when the name still led to a public address.
    await client.app[keys.SESSIONS].record_webhook(session_id, WebhookDelivery(rebound))
    assert (await client.post(f"{V1}/cancel/{session_id}")).status == 200
    webhook = await webhook_of(client, session_id, done="failed")
    assert "not a public address" in webhook["lastError"] and webhook["lastStatus"] is None
    assert receiver.received == []


@pytest.mark.parametrize(
    "address, public",
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("100.64.0.1", False),  # carrier-grade NAT: not public either
        ("::ffff:10.0.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
    ],
)
def test_only_public_addresses_are_allowed_unless_private_ones_are(address, public):
    assert address_allowed(address, allow_private=False) is public
    assert address_allowed(address, allow_private=True) is True


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://example.com/hook", "absolute http or https URL"),
        ("/relative/hook", "absolute http or https URL"),
        ("http://", "absolute http or https URL"),
    ],
)
async def test_a_webhook_url_that_is_no_receiver_is_a_400_saying_so(
    aiohttp_client, tmp_path, sample_video, url, fragment
):
    client = await start(aiohttp_client, tmp_path, **FAST)
    response = await upload(client, sample_video, analysis_type="highlights", webhook_url=url)
    body = await response.json()
    assert response.status == 400 and fragment in body["message"], body


async def test_the_synchronous_legacy_routes_take_no_webhook(
    aiohttp_client, tmp_path, sample_video, receiver
):
    client = await start(aiohttp_client, tmp_path, **FAST)
    form = video_form(sample_video, webhook_url=receiver.url)
    response = await client.post("/analyze/highlights", data=form)
    body = await response.json()
    assert response.status == 400 and "webhook_url" in body["message"], body
    assert receiver.received == []


async def test_without_a_secret_a_webhook_url_is_refused_with_how_to_set_one(
    aiohttp_client, tmp_path, sample_video, receiver
):
    client = await start(aiohttp_client, tmp_path, webhook_allow_private=True)
    response = await upload(
        client, sample_video, analysis_type="highlights", webhook_url=receiver.url
    )
    body = await response.json()
    assert response.status == 400
    assert "WEBHOOK_SECRET" in body["message"] and "whsec_" in body["message"]


@pytest.mark.parametrize(
    "raw", ["secret", "whsec_", "whsec_not*base64", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_a_webhook_secret_that_is_no_standard_webhooks_key_stops_the_server(raw, capsys):
    with pytest.raises(SystemExit):
        Config.from_env_and_args([], {"WEBHOOK_SECRET": raw})
    assert "WEBHOOK_SECRET: must be whsec_ followed by the base64" in capsys.readouterr().err


def test_the_webhook_secret_stays_out_of_the_config_repr():
    config = Config.from_env_and_args([], {"WEBHOOK_SECRET": SECRET})
    assert config.webhook_secret == SECRET and SECRET not in repr(config)


async def test_a_server_killed_with_a_delivery_pending_delivers_it_after_the_restart(
    tmp_path, sample_video, receiver
):
    receiver.answers = [503, 204]
    data_dir = tmp_path / "data"
    settings = {
        "webhook_secret": SECRET,
        "webhook_allow_private": 1,
        # Far beyond the test: only the restart can bring the second attempt.
        "webhook_first_retry_seconds": 3600,
    }
    # The job is cancelled at once: no model is needed, and none is at this path.
    model_dir = tmp_path / "no-model"
    async with aiohttp.ClientSession() as http:
        first = ServerProcess(data_dir, model_dir, **settings)
        try:
            await first.ready(http)
            form = aiohttp.FormData()
            form.add_field("analysis_type", "highlights")
            form.add_field("webhook_url", receiver.url)
            form.add_field("file", sample_video.read_bytes(), filename="clip.mp4")
            async with http.post(f"{first.url}{V1}/upload", data=form) as response:
                assert response.status == 202, await response.text()
                session_id = (await response.json())["sessionId"]
            async with http.post(f"{first.url}{V1}/cancel/{session_id}") as response:
                assert response.status in (200, 409)  # 409: its worker failed first
            webhook = await _served_webhook(http, first.url, session_id, attempts=1)
            assert webhook["state"] == "pending" and webhook["lastStatus"] == 503
            first.proc.kill()
            first.proc.wait(timeout=WAIT_SECONDS)
        finally:
            first.stop()
        second = ServerProcess(data_dir, model_dir, **settings)
        try:
            await second.ready(http)
            webhook = await _served_webhook(http, second.url, session_id, attempts=2)
            assert webhook["state"] == "delivered" and webhook["lastStatus"] == 204
            async with http.get(f"{second.url}{V1}/status/{session_id}") as response:
                status = await response.json()
        finally:
            second.stop()
    assert len(receiver.received) == 2
    assert all(got["headers"]["webhook-id"] == session_id for got in receiver.received)
    del status["webhook"]
    assert receiver.received[1]["payload"] == status
    assert status["status"] in ("cancelled", "failed")


async def _served_webhook(
    http: aiohttp.ClientSession, url: str, session_id: str, *, attempts: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESTART_WAIT_SECONDS
    while True:
        async with http.get(f"{url}{V1}/status/{session_id}") as response:
            webhook = (await response.json())["webhook"]
        if webhook["attempts"] >= attempts:
            return webhook
        assert loop.time() < deadline, webhook
        await asyncio.sleep(0.1)


async def test_closing_waits_for_an_attempt_under_way_and_records_it(
    make_sessions, data_paths, receiver
):
    """A stop (a restart, a rolling deploy) while a POST is out must not leave the receiver's
    2xx unrecorded: the next owner would send it again."""
    sessions = make_sessions()
    pending = WebhookDelivery(receiver.url, DeliveryState.PENDING, pending_since=utcnow())
    ended = await sessions.create(
        new_session(data_paths, status=SessionStatus.COMPLETED, webhook=pending)
    )
    receiver.gate = asyncio.Event()
    deliverer = WebhookDeliverer(
        sessions, SECRET, claims=MemoryDeliveryClaims(), allow_private=True
    )
    await deliverer.start()
    await asyncio.wait_for(receiver.arrived.wait(), WAIT_SECONDS)
    closing = asyncio.create_task(deliverer.close())
    await asyncio.sleep(0.1)
    assert not closing.done(), "close did not wait for the POST under way"
    receiver.gate.set()
    await asyncio.wait_for(closing, WAIT_SECONDS)
    delivery = (await sessions.get(ended.id)).webhook
    assert delivery is not None and delivery.state is DeliveryState.DELIVERED
    assert delivery.attempts == 1 and len(receiver.received) == 1


async def test_closing_stops_a_delivery_waiting_for_its_retry_and_keeps_it_pending(
    make_sessions, data_paths, receiver
):
    receiver.answers = [503]
    sessions = make_sessions()
    pending = WebhookDelivery(receiver.url, DeliveryState.PENDING, pending_since=utcnow())
    ended = await sessions.create(
        new_session(data_paths, status=SessionStatus.FAILED, webhook=pending)
    )
    claims = MemoryDeliveryClaims()
    deliverer = WebhookDeliverer(
        sessions, SECRET, claims=claims, allow_private=True, first_retry_seconds=3600
    )
    await deliverer.start()
    assert await eventually(lambda: len(receiver.received) == 1)
    await asyncio.wait_for(deliverer.close(), WAIT_SECONDS)
    delivery = (await sessions.get(ended.id)).webhook
    assert delivery is not None and delivery.state is DeliveryState.PENDING
    assert delivery.attempts == 1
    assert await claims.take(ended.id), "the claim was let go for the next owner"
