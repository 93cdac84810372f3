"""The one place that picks where files live: a bucket if STORAGE_URL is set, else DATA_DIR.

The S3 client takes its endpoint, region and credentials the way every AWS tool does
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or the host's
role), so a node's whole storage setting is the one URL.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from server.storage.files import SessionFiles, StorageMisconfigured, StorageUnavailable
from server.storage.local import LocalFiles
from server.storage.paths import DataPaths
from server.storage.s3 import S3Files, parse_storage_url


@contextlib.asynccontextmanager
async def open_files(storage_url: str | None, paths: DataPaths) -> AsyncIterator[SessionFiles]:
    """The files of this node, open for as long as the context lasts."""
    if storage_url is None:
        yield LocalFiles(paths)
        return
    bucket, prefix = parse_storage_url(storage_url)
    files = S3Files(
        bucket,
        prefix,
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        region=os.environ.get("AWS_REGION") or None,
    )
    await files.open()
    try:
        yield files
    finally:
        await files.close()


async def storage_problem(storage_url: str | None, paths: DataPaths) -> str | None:
    """Why this node cannot keep files where it is told to (one line), or None if it can:
    it writes, reads back and deletes a small file there."""
    try:
        async with open_files(storage_url, paths) as files:
            await files.check()
    except (StorageMisconfigured, StorageUnavailable, OSError, ValueError) as exc:
        return f"cannot use {storage_url or paths.root} for files: {exc}"
    return None
