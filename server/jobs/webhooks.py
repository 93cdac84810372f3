"""Webhooks: when a session ends, POST its status body to the URL its client gave.

Signed the Standard Webhooks way by the `standardwebhooks` library (`webhook-id` is the
session id, the same on every retry; `webhook-timestamp` and `webhook-signature` are made
fresh for each attempt, as receivers refuse old timestamps). A delivery is retried with
doubling delays until a 2xx or the end of the retry window; redirects are not followed.
Its state lives in the session's snapshot (`server.state.webhook_delivery`), written
after every attempt, so a restarted server finishes what a killed one had pending.

One node delivers a session's webhook at a time: the deliverer claims it first
(`server.jobs.webhook_claims`), renews the claim while the delivery and its retries run,
and lets it go when it is over. On a cluster a node that died lets its claims lapse, and
the sweep of a live node takes those deliveries up: once per cluster normally, at least
once across crashes; receivers drop repeats by `webhook-id`.

Receivers on loopback, private, link-local or otherwise non-public addresses are refused
unless allowed, both when the URL is given (a 400) and on every connection: the resolver
checks each address it returns, so a name that changes its answer later is caught too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import aiohttp
import msgspec
from aiohttp.resolver import ThreadedResolver
from standardwebhooks import Webhook
from yarl import URL

from server.jobs.webhook_claims import DeliveryClaims
from server.state.bodies import StatusBody, status_body
from server.state.models import SessionError, SessionNotFound, utcnow
from server.state.redis_connection import StateUnavailable, raise_if_cancelling
from server.state.sessions import Sessions
from server.state.webhook_delivery import DeliveryState, WebhookDelivery
from server.version import SERVICE_NAME, VERSION

log = logging.getLogger(__name__)
R = TypeVar("R")

# A receiver answers at once and does its work later; one slower than this counts as down.
ATTEMPT_TIMEOUT_SECONDS = 10.0
# Doubling delays stop growing here, so a receiver back after an outage hears soon.
MAX_RETRY_DELAY_SECONDS = 600.0
# Enough for a burst of sessions ending together without one slow receiver holding others.
MAX_CONCURRENT_ATTEMPTS = 8
MAX_URL_CHARS = 2048
# Renewals per claim lease: two can be lost (a slow Redis, a pause) before the claim lapses.
RENEWALS_PER_LEASE = 3
# While the shared state is away, ask again this often (Redis restarts take seconds).
STATE_RETRY_SECONDS = 1.0
HOW_TO_SET_A_SECRET = (
    "start the server with WEBHOOK_SECRET (or --webhook-secret) set to whsec_ followed by "
    'base64 of 24 to 64 random bytes, e.g. the output of: python -c "import base64, secrets; '
    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)


class WebhookRefused(SessionError):
    """A `webhook_url` this server will not call; `str()` says why and what to do."""


class AddressNotAllowed(OSError):
    """A receiver's address is not public and private ones are not allowed."""

    def __init__(self, message: str) -> None:
        # With an errno, OSError keeps `message` as strerror, which aiohttp's error shows.
        super().__init__(errno.EACCES, message)


def address_allowed(address: str, allow_private: bool) -> bool:
    """Whether a receiver at `address` (an IP literal) may be called."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback, whatever Python 3.11 says of it
    return allow_private or (ip.is_global and not ip.is_multicast)


async def vet_webhook_url(raw: Any, *, allow_private: bool) -> str:
    """The URL to call when the session ends, or WebhookRefused saying what is wrong.

    It must be http(s) with a host, and every address the host resolves to must be
    public unless `allow_private`.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise WebhookRefused("webhook_url must be an http or https URL, as text")
    text = raw.strip()
    if len(text) > MAX_URL_CHARS:
        raise WebhookRefused(f"webhook_url is longer than {MAX_URL_CHARS} characters")
    try:
        url = URL(text)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise WebhookRefused(
            f"webhook_url must be an absolute http or https URL, got {_shown(text)}"
        )
    for address in await _addresses(url):
        if not address_allowed(address, allow_private):
            raise WebhookRefused(
                f"webhook_url host {url.host} is at {address}, a loopback, private, "
                "link-local or reserved address; give a public receiver "
                "(WEBHOOK_ALLOW_PRIVATE=1 lets the server call such addresses)"
            )
    return text


async def _addresses(url: URL) -> list[str]:
    assert url.host is not None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.host, url.port, type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        raise WebhookRefused(f"webhook_url host {url.host} does not resolve") from None
    return sorted({str(info[4][0]) for info in infos})


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


class GuardedResolver(ThreadedResolver):
    """aiohttp's resolver, refusing names that lead to a non-public address (if not allowed).

    aiohttp does not ask a resolver about IP literals; those are checked before each attempt.
    """

    def __init__(self, allow_private: bool) -> None:
        super().__init__()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        found = await super().resolve(host, port, family)
        for entry in found:
            if not address_allowed(entry["host"], self._allow_private):
                raise AddressNotAllowed(f"{host} is at {entry['host']}, not a public address")
        return found


def webhook_payload(body: StatusBody) -> bytes:
    """What is POSTed: the session's status body, without the delivery's own bookkeeping."""
    data = msgspec.to_builtins(body)
    del data["webhook"]
    return msgspec.json.encode(data)


class WebhookDeliverer:
    """Delivers the pending webhooks of ended sessions; one task per delivery, owned here."""

    def __init__(
        self,
        sessions: Sessions,
        secret: str | None,
        *,
        claims: DeliveryClaims,
        allow_private: bool = False,
        first_retry_seconds: float = 5.0,
        retry_window_seconds: float = 6 * 3600.0,
    ) -> None:
        """`secret` is the `whsec_...` signing key; without one no webhook is accepted.

        `claims` make sure that one node at a time delivers a session's webhook.
        """
        self._sessions = sessions
        self._claims = claims
        self._signer = Webhook(secret) if secret else None
        self._allow_private = allow_private
        self._first_retry = first_retry_seconds
        self._window = timedelta(seconds=retry_window_seconds)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Sessions whose POST is out: close lets it come back and be recorded, since a
        # receiver may have taken it already and another node would send it again.
        self._posting: set[str] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_ATTEMPTS)
        self._http: aiohttp.ClientSession | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    async def target(self, raw_url: Any) -> WebhookDelivery | None:
        """The delivery a request's `webhook_url` asks for (None if it gives none).

        Raises WebhookRefused for a URL this server will not call, or when no signing
        secret is configured.
        """
        if raw_url is None or raw_url == "":
            return None
        if self._signer is None:
            raise WebhookRefused(f"webhook_url needs a signing secret: {HOW_TO_SET_A_SECRET}")
        return WebhookDelivery(await vet_webhook_url(raw_url, allow_private=self._allow_private))

    async def start(self) -> None:
        """Open the HTTP client and take up every delivery still pending in the store.

        Deliveries another live node holds are left to it; with claims that lapse, a sweep
        every lease takes up those whose node died since.
        """
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allow_private))
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_SECONDS),
            headers={"User-Agent": f"{SERVICE_NAME}/{VERSION}"},
        )
        self._sessions.on_webhook_due(self.due)
        # The full scan finds too what a node killed before its first claim left behind.
        for session in await self._sessions.list():
            if session.webhook is not None and session.webhook.state is DeliveryState.PENDING:
                log.info("session %s: webhook still pending, delivering", session.id)
                self.due(session.id)
        if self._claims.lease_seconds is not None:
            self._sweeper = asyncio.create_task(
                self._sweep(self._claims.lease_seconds), name="webhook sweep"
            )

    def due(self, session_id: str) -> None:
        """Deliver the session's pending webhook (again a no-op while one task is on it)."""
        if self._closed or self._signer is None or session_id in self._tasks:
            return
        task = asyncio.create_task(self._claimed(session_id), name=f"webhook {session_id}")
        self._tasks[session_id] = task
        task.add_done_callback(functools.partial(self._delivery_done, session_id))

    def _delivery_done(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(session_id) is task:
            del self._tasks[session_id]
        if not task.cancelled() and task.exception() is not None:
            # Its claim is let go and it stays pending in the store: a sweep (on a cluster)
            # or the next start takes it up again.
            log.error("session %s: webhook delivery crashed", session_id, exc_info=task.exception())

    async def close(self) -> None:
        """Stop delivering and let the claims go; what is pending stays so in the store.

        An attempt under way is awaited (at most ATTEMPT_TIMEOUT_SECONDS) and recorded
        first, so that a restart does not make the next owner send it again.
        """
        self._closed = True
        tasks = list(self._tasks.values())
        for session_id, task in self._tasks.items():
            if session_id not in self._posting:
                task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            tasks.append(self._sweeper)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _sweep(self, every: float) -> None:
        """Take up the deliveries whose claim lapsed: their node died or stalled."""
        while True:
            raise_if_cancelling()
            await asyncio.sleep(every)
            try:
                lapsed = await self._claims.unclaimed()
            except StateUnavailable:
                continue  # the next round asks again
            for session_id in lapsed:
                log.info("session %s: webhook claim lapsed, taking the delivery up", session_id)
                self.due(session_id)

    async def _claimed(self, session_id: str) -> None:
        """Deliver under this node's claim, renewed meanwhile; leave it to whoever holds it."""
        if not await self._patiently(self._claims.take, session_id):
            log.debug("session %s: webhook held by another node", session_id)
            return
        keeper = None
        if self._claims.lease_seconds is not None:
            delivery = asyncio.current_task()
            assert delivery is not None
            keeper = asyncio.create_task(
                self._keep(session_id, self._claims.lease_seconds, delivery),
                name=f"webhook claim {session_id}",
            )
        over = False
        try:
            over = await self._deliver(session_id)
        finally:
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            with contextlib.suppress(StateUnavailable):  # unreleased, it lapses by itself
                await self._claims.release(session_id, over=over)

    async def _keep(self, session_id: str, lease: float, delivery: asyncio.Task[None]) -> None:
        """Renew the claim; stop the delivery once another node holds it, or once a whole
        lease went by unrenewed (the shared state was away: another node may take it)."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            raise_if_cancelling()
            await asyncio.sleep(lease / RENEWALS_PER_LEASE)
            try:
                held = await self._claims.renew(session_id)
                if held:
                    renewed = loop.time()
            except StateUnavailable:
                held = loop.time() - renewed < lease
            if not held:
                log.warning("session %s: webhook claim lost; its new holder delivers", session_id)
                delivery.cancel()
                return

    async def _patiently(self, call: Callable[[str], Awaitable[R]], session_id: str) -> R:
        """`call(session_id)`, asked again while the shared state is away (an outage is a
        wait; the claim's keeper ends the delivery if it lasts a lease)."""
        while True:
            try:
                return await call(session_id)
            except StateUnavailable:
                log.warning("session %s: webhook waits for the shared state", session_id)
                await asyncio.sleep(STATE_RETRY_SECONDS)

    async def _deliver(self, session_id: str) -> bool:
        """Attempt and retry until delivered or given up; True once nothing is left to do."""
        try:
            while True:
                session = await self._patiently(self._sessions.get, session_id)
                delivery = session.webhook
                if delivery is None or delivery.state is not DeliveryState.PENDING:
                    return True
                payload = webhook_payload(status_body(session))
                attempted = await self._post_and_record(session_id, delivery, payload)
                if attempted is None:
                    return False  # closing
                delivery, wait = attempted
                if delivery.state is not DeliveryState.PENDING or wait is None:
                    return True
                if self._closed:
                    return False
                await asyncio.sleep(wait)
        except SessionNotFound:
            return True  # deleted or expired: nobody to tell about it any more

    async def _post_and_record(
        self, session_id: str, delivery: WebhookDelivery, payload: bytes
    ) -> tuple[WebhookDelivery, float | None] | None:
        """One attempt, stored: the delivery as it stands now and the seconds until the
        next attempt (None: no more). None if closing before it could begin; once begun,
        `close` waits for it."""
        async with self._slots:
            if self._closed:
                return None
            self._posting.add(session_id)
            try:
                status, error = await self._attempt(session_id, delivery.url, payload)
                delivery = delivery.replace(
                    attempts=delivery.attempts + 1, last_status=status, last_error=error
                )
                wait = self._next_wait(delivery)
                if error is None:
                    delivery = delivery.replace(
                        state=DeliveryState.DELIVERED, delivered_at=utcnow()
                    )
                    log.info("session %s: webhook delivered (HTTP %s)", session_id, status)
                elif wait is None:
                    delivery = delivery.replace(state=DeliveryState.FAILED)
                    log.warning(
                        "session %s: webhook given up after %d attempts: %s",
                        session_id,
                        delivery.attempts,
                        error,
                    )
                else:
                    log.info(
                        "session %s: webhook attempt %d failed (%s); retry in %.1f s",
                        session_id,
                        delivery.attempts,
                        error,
                        wait,
                    )
                recorded = functools.partial(self._sessions.record_webhook, delivery=delivery)
                await self._patiently(recorded, session_id)
            finally:
                self._posting.discard(session_id)
        return delivery, wait

    def _next_wait(self, delivery: WebhookDelivery) -> float | None:
        """Seconds until the next attempt, or None when the retry window is over."""
        started = delivery.pending_since or utcnow()
        left = (started + self._window - utcnow()).total_seconds()
        if left <= 0:
            return None
        doubling = self._first_retry * 2 ** min(delivery.attempts - 1, 32)
        return min(doubling, MAX_RETRY_DELAY_SECONDS, left)

    async def _attempt(
        self, session_id: str, url: str, payload: bytes
    ) -> tuple[int | None, str | None]:
        """One signed POST: (HTTP status or None, None if delivered else why not)."""
        assert self._http is not None and self._signer is not None
        host = URL(url).host or ""
        with contextlib.suppress(ValueError):  # not an IP literal: the resolver checks it
            if not address_allowed(host, self._allow_private):
                return None, f"{host} is not a public address"
        now = datetime.now(timezone.utc)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": session_id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": self._signer.sign(session_id, now, payload.decode()),
        }
        try:
            async with self._http.post(
                url, data=payload, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
        except asyncio.TimeoutError:
            return None, f"no answer within {ATTEMPT_TIMEOUT_SECONDS:g} s"
        except aiohttp.ClientError as exc:
            refused = getattr(exc, "os_error", None)  # a connector error's cause
            if isinstance(refused, AddressNotAllowed):
                return None, refused.strerror
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return status, None
        if 300 <= status < 400:
            return status, f"HTTP {status}: redirects are not followed"
        return status, f"HTTP {status}"

    def __repr__(self) -> str:
        return f"<WebhookDeliverer delivering={len(self._tasks)} closed={self._closed}>"
