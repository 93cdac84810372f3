"""Uploads against a probe that a file crashes or hangs: a 415, a new probe, a server serving on.

The app's probe command is `tests/fixtures/fake_probe.py`, whose answer the file's first
word picks (`crash`, `hang`, anything else a good video).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from server.jobs import probe
from server.web import app_keys as keys
from tests.server.conftest import FAKE_PROBE, dies
from tests.server.http_helpers import files_under, start, upload


@pytest.fixture
def file_saying(tmp_path):
    def write(word: str) -> Path:
        path = tmp_path / f"{word}.mp4"
        path.write_text(f"{word}\n")
        return path

    return write


@pytest.mark.parametrize("word", ["crash", "hang"])
async def test_a_file_that_breaks_the_probe_is_a_415_the_probe_is_replaced_and_uploads_go_on(
    aiohttp_client, tmp_path, file_saying, word
):
    client = await start(
        aiohttp_client,
        tmp_path,
        probe_command=(sys.executable, str(FAKE_PROBE)),
        probe_timeout_seconds=2.0,
    )
    probes = client.app[keys.PROBES]
    before = set(probes.pids)

    response = await upload(client, file_saying(word), analysis_type="highlights")
    assert response.status == 415
    body = await response.json()
    assert body["error"] == "Unsupported media type"
    assert body["message"].startswith(probe.PROBE_FAILED)
    assert files_under(tmp_path / "data") == []

    broken = before - set(probes.pids)
    assert len(broken) == 1, "exactly the probe that took the file was replaced"
    assert await dies(broken.pop())
    response = await upload(client, file_saying("fine"), analysis_type="highlights")
    assert response.status == 202
    assert len(probes.pids) == len(before)
    assert (await client.get("/health")).status == 200
