"""Resumable uploads (tus 1.0.0, `/api/v1/video/uploads/`) for `smolvlm-client upload`.

tuspy does the protocol: creating the upload, each PATCH from an offset, the HEAD that
asks the server for its offset, the metadata encoding and the file's fingerprint; its
URL storage (a small JSON file under the user's cache dir) remembers the upload's URL,
so running the same command again after a crash or a Ctrl-C resumes the same upload.

Three things are done here rather than left to tuspy 1.1, each for a reason:
- Retries. tuspy's retry retries every error status too, so a video the server refuses
  on its last byte (415, 422: the upload is then gone) would end as "HEAD 404" with the
  server's reason lost. Here a lost connection, a 5xx, 409 and 423 are retried after a
  HEAD (as tus-js-client does); any other status ends the upload with the API's error.
- Its synchronous calls (the HEAD, made with `requests`) run in a thread, off the loop.
- The stored URL is looked up and saved here, keyed by the file (path, mtime, tuspy's
  fingerprint), the server and the metadata: the same file sent with other settings is
  another upload, since the analysis is fixed at creation. tuspy would reopen the file
  for each request without closing it; here it reads one stream this module closes.

The server names the new session in the last PATCH's `Session-Id` (or, for an upload
that had already completed, the upload's GET); from there the v1 API is unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError
from tusclient.fingerprint.fingerprint import Fingerprint
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import AsyncUploader

UPLOADS = "/api/v1/video/uploads/"
TUS_VERSION = "1.0.0"
MIB = 1024 * 1024
# A PATCH carries this much (tuspy reads it into memory): a lost connection costs at most
# the part of one chunk that had not reached the server.
CHUNK_BYTES = 50 * MIB
# Waits before each retry of a failed request, after which the error is reported; the
# count starts again once a chunk gets through. A restarting server is back in seconds.
RETRY_DELAYS_SECONDS = (1.0, 2.0, 5.0, 10.0, 20.0)
# Statuses worth a retry besides the 5xx: 409 (the offset moved on: HEAD says where) and
# 423 (another request is still writing the upload, such as the one just cut off).
RETRY_STATUSES = frozenset({409, 423})
# Statuses after which the stored upload is of no more use: it is gone, or never will be.
GONE_STATUSES = frozenset({404, 410, 413, 415, 422})
CACHE_DIR_ENV = "XDG_CACHE_HOME"


class UploadInterrupted(Exception):
    """The upload could not go on (no connection, retries spent); its URL is kept, so the
    same command resumes it."""


class UploadRefused(Exception):
    """The server answered a tus request with an error: its status and JSON body, if any."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def url_storage_path() -> Path:
    """Where upload URLs are remembered: the user's cache dir (XDG; ~/Library on macOS)."""
    if sys.platform == "darwin":
        cache = Path.home() / "Library" / "Caches"
    else:
        cache = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache")
    return cache / "smolvlm-client" / "tus-uploads.json"


async def tus_offered(http: aiohttp.ClientSession, url: str) -> bool:
    """Whether the server at `url` speaks tus 1.0.0 (an older one does not)."""
    async with http.options(f"{url}{UPLOADS}") as response:
        if response.status in (401, 403):
            raise UploadRefused(response.status, await _json_or_none(response))
        versions = response.headers.get("Tus-Version", "").split(",")
        return response.ok and TUS_VERSION in (version.strip() for version in versions)


async def upload(
    http: aiohttp.ClientSession,
    url: str,
    video: Path,
    metadata: Mapping[str, str],
    notice: Callable[[str], None],
) -> str:
    """Send `video` through tus, resuming an upload of the same file and metadata that an
    earlier run left unfinished; the session id the completed upload became.

    `http` carries the API key (its default headers go to tuspy too); `notice` gets a line
    when an upload is resumed or a request is retried.
    """
    endpoint = f"{url}{UPLOADS}"
    tus = TusClient(endpoint, headers=dict(http.headers))
    storage_path = url_storage_path()
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    storage = FileStorage(str(storage_path))
    try:
        with video.open("rb") as stream:
            key = _upload_key(video, stream, endpoint, metadata)
            try:
                uploader = await asyncio.to_thread(
                    _resumed, tus, stream, dict(metadata), storage, key
                )
            except TusCommunicationError as error:
                raise UploadInterrupted(_reason(error)) from error
            size = uploader.get_file_size()
            upload_url: str | None = uploader.url
            if upload_url is None:
                upload_url = await _retrying(uploader.create_url, notice)
                uploader.set_url(upload_url)
                storage.set_item(key, upload_url)
            elif uploader.offset:
                notice(
                    f"Resuming the upload of {video.name}: {uploader.offset / MIB:,.1f} MiB "
                    f"of {size / MIB:,.1f} already on the server"
                )
            try:
                await _send(uploader, size, notice)
            except UploadRefused as refused:
                if refused.status in GONE_STATUSES:
                    storage.remove_item(key)
                raise
            session_id = await _session_of(http, uploader, upload_url)
            storage.remove_item(key)
            return session_id
    finally:
        storage.close()


def _upload_key(video: Path, stream: IO[bytes], endpoint: str, metadata: Mapping[str, str]) -> str:
    """The stored URL's key: this file (as tuspy fingerprints it, and where and when it was
    written), this server and these settings."""
    parts = [
        Fingerprint().get_fingerprint(stream),
        str(video.resolve()),
        str(video.stat().st_mtime_ns),
        endpoint,
        json.dumps(dict(metadata), sort_keys=True),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _resumed(
    tus: TusClient, stream: IO[bytes], metadata: dict[str, str], storage: FileStorage, key: str
) -> AsyncUploader:
    """An uploader at the stored upload's offset (tuspy HEADs it), or a new one if there is
    none or the server no longer has it. Blocking: run in a thread."""
    options: dict[str, Any] = {"file_stream": stream, "chunk_size": CHUNK_BYTES}
    stored = storage.get_item(key)
    if stored:
        try:
            return tus.async_uploader(url=stored, metadata=metadata, **options)
        except TusCommunicationError as error:
            if error.status_code is None:
                raise  # the server is unreachable: keep the URL for the next run
            storage.remove_item(key)  # expired, deleted or completed: start again
    return tus.async_uploader(metadata=metadata, **options)


async def _send(uploader: AsyncUploader, size: int, notice: Callable[[str], None]) -> None:
    """PATCH chunk after chunk to the end; after a failure, HEAD the offset and go on."""
    failures = 0
    while uploader.offset < size:
        try:
            await uploader.upload_chunk()
            failures = 0
        except (TusCommunicationError, asyncio.TimeoutError) as error:
            _raise_unless_retryable(error)
            if failures == len(RETRY_DELAYS_SECONDS):
                raise UploadInterrupted(_reason(error)) from error
            notice(f"Upload interrupted ({_reason(error)}); resuming")
            await asyncio.sleep(RETRY_DELAYS_SECONDS[failures])
            failures += 1
            try:
                uploader.offset = await asyncio.to_thread(uploader.get_offset)
            except TusCommunicationError as head_error:
                _raise_unless_retryable(head_error)


async def _retrying(create: Callable[[], Any], notice: Callable[[str], None]) -> str:
    """The new upload's URL; a lost connection or a 5xx is retried like a PATCH."""
    for delay in (*RETRY_DELAYS_SECONDS, None):
        try:
            return str(await create())
        except TusCommunicationError as error:
            _raise_unless_retryable(error)
            if delay is None:
                raise UploadInterrupted(_reason(error)) from error
            notice(f"Creating the upload failed ({_reason(error)}); retrying")
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _raise_unless_retryable(error: Exception) -> None:
    """An error status that a retry cannot mend becomes UploadRefused (with the API's body)."""
    status = getattr(error, "status_code", None)
    if status is None or status >= 500 or status in RETRY_STATUSES:
        return
    content = getattr(error, "response_content", None)
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    raise UploadRefused(status, body) from error


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


async def _session_of(http: aiohttp.ClientSession, uploader: AsyncUploader, upload_url: str) -> str:
    """The session the completed upload became: from the last PATCH, else the upload's GET
    (an upload that had completed before this run sent any byte)."""
    if uploader.request is not None:
        named = uploader.request.response_headers.get("session-id")
        if named:
            return str(named)
    async with http.get(upload_url) as response:
        body = await _json_or_none(response)
        if response.status >= 400:
            raise UploadRefused(response.status, body)
    if not isinstance(body, dict) or not body.get("sessionId"):
        raise UploadRefused(response.status, {"error": "The upload completed without a session"})
    return str(body["sessionId"])


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:
        return None
