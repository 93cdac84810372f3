"""The access log: never the query string (it may hold a key); successful polls only at DEBUG."""

from __future__ import annotations

import logging

from server.__main__ import AccessLogger
from server.app import create_app
from tests.server.http_helpers import V1, make_config, upload_id


async def test_polls_are_quiet_when_they_succeed_and_nothing_logs_a_query(
    aiohttp_server, aiohttp_client, tmp_path, sample_video, caplog
):
    logger = logging.getLogger("test.access")
    server = await aiohttp_server(
        create_app(make_config(tmp_path)), access_log_class=AccessLogger, access_log=logger
    )
    client = await aiohttp_client(server)
    session_id = await upload_id(client, sample_video)
    caplog.set_level(logging.DEBUG, logger="test.access")

    await client.get(f"{V1}/status/{session_id}?access_token=secret")
    await client.get("/health")
    await client.get(f"{V1}/status/not-a-uuid")
    await client.get(f"{V1}/results/{session_id}")

    levels = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in levels] == [
        logging.DEBUG,  # a successful poll
        logging.DEBUG,  # a health check
        logging.INFO,  # a failed poll is worth a line
        logging.INFO,  # anything else
    ]
    assert not any("secret" in message or "?" in message for _, message in levels)
