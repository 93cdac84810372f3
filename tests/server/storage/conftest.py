"""`S3Files` on the module's real S3 server (`s3_server`, tests/server/conftest.py) under
a fresh prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from server.storage.s3 import MIN_PART_BYTES, S3Files
from tests.server.s3_server import S3Server


def s3_files(
    server: S3Server,
    *,
    bucket: str | None = None,
    secret_key: str | None = None,
    endpoint_url: str | None = None,
) -> S3Files:
    """`S3Files` on `server` under a fresh prefix, its keys given explicitly (the test's
    environment may hold other AWS_* settings), with parts of S3's minimum size so that a
    few MiB make several."""
    return S3Files(
        bucket or server.bucket,
        f"test-{uuid.uuid4().hex}",
        endpoint_url=endpoint_url or server.endpoint_url,
        region=server.region,
        access_key=server.access_key,
        secret_key=secret_key or server.secret_key,
        part_bytes=MIN_PART_BYTES,
    )


@pytest.fixture
async def make_files(s3_server: S3Server) -> AsyncIterator[Callable[..., Awaitable[S3Files]]]:
    """Opens `s3_files(s3_server, **options)`; closes them all when the test ends."""
    opened: list[S3Files] = []

    async def make(**options: str) -> S3Files:
        made = await s3_files(s3_server, **options).open()
        opened.append(made)
        return made

    yield make
    for made in opened:
        await made.close()


@pytest.fixture
async def files(make_files: Callable[..., Awaitable[S3Files]]) -> S3Files:
    """Open `S3Files` on the module's server, under a prefix of this test's own."""
    return await make_files()
