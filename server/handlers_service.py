"""Handlers about the service itself: the index, health and the OpenAPI description."""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web

from protocol import model_display_name
from server import keys
from server.config import SERVICE_NAME, VERSION
from server.openapi import openapi_document


async def index(request: web.Request) -> web.Response:
    """The service's name, version and endpoints."""
    return web.json_response(
        {
            "service": SERVICE_NAME,
            "version": VERSION,
            "openapi": "/api/v1/openapi.json",
            "endpoints": endpoints(request.app),
        }
    )


def endpoints(app: web.Application) -> list[dict[str, Any]]:
    """Method, path and summary of every route, from the router itself."""
    listed = []
    for route in app.router.routes():
        if route.method in (hdrs.METH_HEAD, hdrs.METH_OPTIONS, hdrs.METH_ANY):
            continue
        doc = (route.handler.__doc__ or "").strip().splitlines()
        listed.append(
            {
                "method": route.method,
                "path": route.resource.canonical if route.resource else "",
                "summary": doc[0] if doc else "",
            }
        )
    return listed


async def health(request: web.Request) -> web.Response:
    """Liveness, the model served and how many jobs run and wait."""
    runner = request.app[keys.RUNNER]
    return web.json_response(
        {
            "status": "healthy",
            "model": model_display_name(request.app[keys.CONFIG].model),
            "running": runner.running_count,
            "queued": runner.queued_count,
            "version": VERSION,
        }
    )


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this API."""
    return web.json_response(openapi_document())
