"""`python -m server`: read the configuration, set up logging, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from server.app import create_app
from server.config import Config
from server.state.redis_connection import redis_problem
from server.storage.opening import storage_problem
from server.storage.paths import DataPaths

# Requests waiting on a job or streaming events are released by the app's on_shutdown,
# so a shutdown only waits this long for ordinary requests still in flight.
SHUTDOWN_TIMEOUT_SECONDS = 10.0


# Polls and health checks are most of the traffic and say nothing when they succeed;
# logging each one took about a fifth of the server's CPU under polling load.
QUIET_ROUTES = frozenset({"status", "progress", "health"})


class AccessLogger(AbstractAccessLogger):
    """One line per request, with the path but never the query: it may hold an access_token.

    Successful status polls and health checks are logged at DEBUG only.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = getattr(request, "match_info", None)
        route = match_info.route.name if match_info is not None else None
        quiet = response.status < 400 and route in QUIET_ROUTES
        self.logger.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %s %d %.3fs",
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


def main(argv: list[str] | None = None) -> None:
    """Parse flags and environment, then run the service in the foreground."""
    config = Config.from_env_and_args(argv, os.environ)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("server").info("Starting with %r", config)
    if config.redis_url is not None:
        problem = asyncio.run(redis_problem(config.redis_url))
        if problem:
            sys.exit(f"Not starting: {problem}")
    problem = asyncio.run(storage_problem(config.storage_url, DataPaths(config.data_dir)))
    if problem:
        sys.exit(f"Not starting: {problem}")
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        access_log_class=AccessLogger,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        print=logging.getLogger("server").info,
    )


if __name__ == "__main__":
    main()
