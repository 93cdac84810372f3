"""A webhook is delivered once per cluster: claimed in Redis by one node, left alone by the
others, taken over by a live node when its holder dies, and delivered once when every
node restarts.

The claims are tested on the run's real redis-server; the cluster through real node
processes (`tests/server/cluster.py`) with leases of two seconds and a receiver that
verifies every signature.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from server.jobs.webhook_claims import CLAIM_KEY, UNFINISHED_KEY, RedisDeliveryClaims
from server.state.redis_connection import connect
from tests.server.cluster import BOUND, LEASE_SECONDS, TERMINAL, Cluster, cluster
from tests.server.conftest import eventually
from tests.server.server_process import ServerProcess
from tests.server.webhook_receiver import SECRET, Receiver, receiver

__all__ = ["cluster", "receiver"]  # the fixtures

# A retry only an hour away: within a test, every attempt after the first comes from a
# node taking the delivery up (a restart, or a sweep finding a lapsed claim).
NODE_SETTINGS = {
    "webhook_secret": SECRET,
    "webhook_allow_private": 1,
    "webhook_first_retry_seconds": 3600,
}
# Short claims for the claim tests, so that one lapses within a test.
SHORT_LEASE = 0.3


@pytest.fixture
async def claims_of(redis_url):
    """`claims_of(node_id, lease)`: RedisDeliveryClaims of a node on the run's Redis."""
    clients = []

    def make(node_id: str, lease: float = 10.0) -> RedisDeliveryClaims:
        clients.append(connect(redis_url))
        return RedisDeliveryClaims(clients[-1], node_id, lease_seconds=lease)

    yield make
    for client in clients:
        await client.aclose()


async def test_one_node_holds_a_delivery_and_the_others_are_refused(claims_of):
    a, b = claims_of("a"), claims_of("b")
    assert await a.take("s1")
    assert not await b.take("s1") and not await b.renew("s1")
    assert await a.take("s1") is False  # a second task of the holder is refused too
    assert await a.renew("s1")
    assert await b.unclaimed() == []


async def test_a_claim_let_go_before_the_end_is_found_by_the_sweep_and_one_taken_over_ends_it(
    claims_of,
):
    a, b = claims_of("a"), claims_of("b")
    assert await a.take("s1") and await a.take("s2")
    await a.release("s1", over=False)  # e.g. a node shutting down mid-delivery
    assert await b.unclaimed() == ["s1"]
    assert await b.take("s1")
    assert await a.unclaimed() == []
    await b.release("s1", over=True)
    await a.release("s2", over=True)
    assert await a.unclaimed() == []


async def test_a_lapsed_claim_is_swept_and_taken_over_and_its_old_holder_cannot_renew_it(
    claims_of,
):
    dead, live = claims_of("dead", SHORT_LEASE), claims_of("live", SHORT_LEASE)
    assert await dead.take("s1")
    assert await live.unclaimed() == []
    found: list[str] = []

    async def swept() -> bool:
        found[:] = await live.unclaimed()
        return found == ["s1"]

    assert await until(swept), "the lapsed claim was never listed"
    assert await live.take("s1")
    assert not await dead.renew("s1")


async def test_a_claim_that_lapsed_while_nobody_took_it_is_renewed_again_by_its_holder(
    claims_of, redis_url
):
    """A node that stalled past its lease, with no other node quicker, keeps delivering."""
    stalled, other = claims_of("stalled", SHORT_LEASE), claims_of("other")
    assert await stalled.take("s1")
    with redis.Redis.from_url(redis_url) as shared:
        assert await eventually(lambda: not shared.exists(CLAIM_KEY + "s1"))
    assert await stalled.renew("s1")
    assert not await other.take("s1")


async def until(check) -> bool:
    """Whether the async `check()` holds within BOUND seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while not await check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# ---- real nodes ------------------------------------------------------------------------


async def webhook_of(cluster: Cluster, session_id: str, check) -> dict[str, Any]:
    """The session's `webhook`, polled through any live node until `check` holds."""
    node = next(node for node in reversed(cluster.nodes) if node.proc.poll() is None)
    body = await cluster.until(node, session_id, lambda body: check(body["webhook"]))
    return body["webhook"]


def holder(cluster: Cluster, session_id: str) -> ServerProcess | None:
    """The node holding the session's delivery claim, if one does."""
    with redis.Redis.from_url(cluster.redis_url, decode_responses=True) as shared:
        node_id = shared.get(CLAIM_KEY + session_id)
    # Cluster.node names a node "<role>-<its index in cluster.nodes>".
    return None if node_id is None else cluster.nodes[int(node_id.rsplit("-", 1)[1])]


async def ended_with_attempts(cluster: Cluster, session_id: str, attempts: int) -> None:
    await cluster.until(cluster.nodes[0], session_id, lambda body: body["status"] in TERMINAL)
    webhook = await webhook_of(cluster, session_id, lambda hook: hook["attempts"] >= attempts)
    assert webhook["state"] == "pending" and webhook["attempts"] == attempts, webhook


def unfinished(cluster: Cluster) -> int:
    with redis.Redis.from_url(cluster.redis_url) as shared:
        return shared.zcard(UNFINISHED_KEY)


@pytest.mark.slow
async def test_three_nodes_restarting_one_killed_deliver_each_pending_webhook_once(
    cluster, sample_video, receiver: Receiver
):
    """Sessions end while the receiver is down; every node restarts (the holder of one
    delivery killed -9, the others stopped), the receiver comes back: each session gets
    exactly one successful delivery, last, and the receiver saw no attempt the store did
    not count (no node attempted behind another's back)."""
    receiver.answers = [503]
    nodes = [await cluster.node("all", **NODE_SETTINGS) for _ in range(3)]
    sessions = [
        await cluster.upload(
            nodes[n], sample_video, "quick.mp4", analysis_type="highlights",
            webhook_url=receiver.url,
        )
        for n in range(3)
    ]  # fmt: skip
    for session_id in sessions:
        await ended_with_attempts(cluster, session_id, 1)
    killed = holder(cluster, sessions[0])
    assert killed is not None, "a pending delivery is held by the node delivering it"
    cluster.kill(killed)
    # In threads, so that the receiver goes on answering: a node stopping later may take
    # up what one stopping earlier let go, and its attempt is one more 503.
    await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))
    receiver.answers = [204]  # back

    await asyncio.gather(*(cluster.node("all", **NODE_SETTINGS) for _ in range(3)))
    for session_id in sessions:
        webhook = await webhook_of(cluster, session_id, lambda hook: hook["state"] != "pending")
        assert webhook["state"] == "delivered" and webhook["lastStatus"] == 204, webhook
    # Room for a duplicate to show: two sweeps of every live node.
    await asyncio.sleep(2 * LEASE_SECONDS)
    for session_id in sessions:
        answered = [one["answered"] for one in receiver.of(session_id)]
        assert answered.count(204) == 1 and answered[-1] == 204, answered
        webhook = await webhook_of(cluster, session_id, lambda hook: True)
        assert webhook["attempts"] == len(answered), (webhook, answered)
    assert unfinished(cluster) == 0
    assert all(holder(cluster, session_id) is None for session_id in sessions)


@pytest.mark.slow
async def test_a_delivery_held_by_a_live_node_is_left_alone_and_taken_over_when_it_is_killed(
    cluster, sample_video, receiver: Receiver
):
    receiver.answers = [503, 204]
    nodes = [await cluster.node("all", **NODE_SETTINGS) for _ in range(3)]
    session_id = await cluster.upload(
        nodes[0], sample_video, "quick.mp4", analysis_type="highlights", webhook_url=receiver.url
    )
    await ended_with_attempts(cluster, session_id, 1)
    owner = holder(cluster, session_id)
    assert owner is not None
    # Another node restarts: it finds the delivery pending but held, and leaves it.
    other = next(node for node in nodes if node is not owner)
    other.stop()
    await cluster.node("all", **NODE_SETTINGS)
    await asyncio.sleep(2 * LEASE_SECONDS)  # two sweeps of every node
    assert len(receiver.of(session_id)) == 1
    assert holder(cluster, session_id) is owner

    cluster.kill(owner)
    webhook = await webhook_of(cluster, session_id, lambda hook: hook["state"] != "pending")
    assert webhook["state"] == "delivered" and webhook["attempts"] == 2, webhook
    assert [one["answered"] for one in receiver.of(session_id)] == [503, 204]
    assert await eventually(lambda: unfinished(cluster) == 0)
    assert holder(cluster, session_id) is None
