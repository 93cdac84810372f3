"""`S3Files` while its S3 server is away: a server of this module's own, killed and started
again by the tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from server.storage.files import StorageUnavailable
from server.storage.s3 import MIN_PART_BYTES, S3Files
from tests.server.s3_server import S3Server


@pytest.fixture
def server_back(s3_server: S3Server) -> Iterator[S3Server]:
    """The module's server, running again after the test whatever the test did to it."""
    yield s3_server
    if s3_server.proc is None:
        s3_server.start()


def unfinished_uploads(server: S3Server, prefix: str) -> list[str]:
    client = server.client()
    try:
        listed = client.list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    finally:
        client.close()
    return [upload["UploadId"] for upload in listed.get("Uploads", [])]


async def test_check_says_unavailable_while_the_server_is_down(
    files: S3Files, server_back: S3Server
) -> None:
    server_back.kill()

    with pytest.raises(StorageUnavailable, match=server_back.endpoint_url):
        await files.check()


async def test_abort_after_a_failed_write_leaves_nothing_once_the_server_is_back(
    files: S3Files, server_back: S3Server
) -> None:
    kept = files.upload_location("s0", "kept.mp4")
    upload = await files.start_upload(kept)
    await upload.write(b"kept")
    await upload.finish()
    location = files.upload_location("s1", "clip.mp4")
    upload = await files.start_upload(location)
    await upload.write(os.urandom(MIN_PART_BYTES))  # the first part is sent
    assert len(unfinished_uploads(server_back, location)) == 1
    server_back.kill()

    with pytest.raises(StorageUnavailable):
        await upload.write(os.urandom(MIN_PART_BYTES))
    await upload.abort()  # the server is away: nothing it can do yet, and no error
    server_back.start()
    await upload.abort()

    assert unfinished_uploads(server_back, location) == []
    assert await files.stat(location) is None
    assert await files.stat(kept) is not None  # what was stored outlives the kill -9
