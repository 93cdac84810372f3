"""A webhook receiver on loopback for the webhook tests, in-process or with real nodes:
it checks every signature with the Standard Webhooks library and keeps what it got."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@dataclass
class Receiver:
    """Answers each POST with the next of `answers` (the last one repeats) and keeps what
    it got (headers, payload, the status it answered), its signature checked."""

    answers: list[int] = field(default_factory=lambda: [204])
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    redirected_to: int = 0
    # When set, each POST waits for `gate` before it is answered; `arrived` is set meanwhile.
    gate: asyncio.Event | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.text()
        # Raises WebhookVerificationError (a 500, and no record) on a bad signature.
        payload = Webhook(SECRET).verify(body, dict(request.headers))
        if self.gate is not None:
            self.arrived.set()
            await self.gate.wait()
        status = self.answers[min(len(self.received) + 1, len(self.answers)) - 1]
        self.received.append(
            {"headers": dict(request.headers), "payload": payload, "answered": status}
        )
        if 300 <= status < 400:
            raise web.HTTPTemporaryRedirect("/elsewhere")
        return web.Response(status=status)

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirected_to += 1
        return web.Response(status=204)

    def of(self, session_id: str) -> list[dict[str, Any]]:
        """What came for `session_id` (its `webhook-id`), in order."""
        return [got for got in self.received if got["headers"]["webhook-id"] == session_id]


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:
    made = Receiver()
    app = web.Application()
    app.router.add_post("/hook", made.hook)
    app.router.add_post("/elsewhere", made.elsewhere)
    server = await aiohttp_server(app)
    made.url = str(server.make_url("/hook"))
    return made
