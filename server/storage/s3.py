"""`SessionFiles` in a bucket of any S3-compatible store (STORAGE_URL=s3://bucket/prefix).

Keys are `<prefix>/uploads/<id>/source.<ext>` and `<prefix>/artifacts/<id>/<name>`, and a
location is such a key, so nodes share nothing but the bucket: the edge streams an upload
in as a multipart upload, a probe reads it through a presigned URL, a worker fetches it
into its scratch folder with parallel ranged GETs and its artifacts are uploaded from
there. Errors are translated where they arise: a store that is away raises
`StorageUnavailable`, a store that refuses us (keys, bucket) `StorageMisconfigured`.

A resumable (tus) upload is one multipart upload to its location, continued by each
append with the next part numbers; the bytes short of a whole part wait in a "tail"
object, `<prefix>/tus/<id>/tails/<offset>-<random>` (`<id>` is the session of an
`uploads/<id>/` location, else a hash of the location; `<offset>` is the upload's offset
once that tail is kept), until the next append reads them back in front of its own bytes,
as tusd's "incomplete part" objects. An append never touches what its input state names,
so a state stays valid until its successor is stored.

One long-lived aiobotocore client (`open`, `close`); credentials, and the endpoint and
region when not given, come from botocore's usual chain (AWS_* variables, profiles, roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

# aiobotocore and botocore ship no type information (and no stubs are installed): their
# calls are typed Any here, and the tests hold them against a real S3 server.
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from server.storage.files import (
    Resumable,
    StorageMisconfigured,
    StorageUnavailable,
    StoredFile,
    inside,
    source_name,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3's smallest part (all but the last); parts are also at most 10,000 per upload.
MIN_PART_BYTES = 5 * MIB
DEFAULT_PART_BYTES = 8 * MIB
# One ranged GET of `bring_local`: large enough to amortise a request, small enough that
# `fetch_parallelism` of them in memory stay modest.
RANGE_BYTES = 8 * MIB
READ_CHUNK_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 1 * MIB
# A probe opens its URL at once and reads a few ranges; a job fetches a copy instead.
PROBE_URL_SECONDS = 10 * 60
# SigV4 presigned URLs live at most 7 days.
MAX_SIGNED_SECONDS = 7 * 24 * 3600
# DeleteObjects takes at most 1,000 keys.
DELETE_BATCH = 1000
# Files of `keep_artifacts` in flight at once.
KEEP_PARALLELISM = 4
# A store that does not accept a connection in 5 s is away; 30 s without a byte is a hang.
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 30
# botocore's "standard" retries (5xx, throttling, connection errors), then our callers'.
ATTEMPTS = 3

CONTENT_TYPES = {".mp4": "video/mp4", ".jpg": "image/jpeg"}
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Error codes that mean "try again later", whatever the HTTP status says.
_UNAVAILABLE_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
)
# Error codes that mean the store refuses us: keys, signature, bucket, permissions.
_REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "InvalidToken",
        "ExpiredToken",
        "NoSuchBucket",
        "SignatureDoesNotMatch",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})

T = TypeVar("T")


def parse_storage_url(url: str) -> tuple[str, str]:
    """The bucket and key prefix of `s3://bucket/some/prefix` (the prefix may be empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        google = (
            " Google Cloud Storage works through its S3 API: s3://bucket with"
            " AWS_ENDPOINT_URL=https://storage.googleapis.com and HMAC keys as"
            " AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
            if parts.scheme == "gs"
            else ""
        )
        raise ValueError(f"storage URL must be s3://bucket[/prefix], not {url!r}.{google}")
    prefix = "/".join(segment for segment in parts.path.split("/") if segment)
    return parts.netloc, prefix


def content_type(name: str) -> str:
    """The Content-Type a file is stored with, from its extension."""
    return CONTENT_TYPES.get(posixpath.splitext(name)[1].lower(), DEFAULT_CONTENT_TYPE)


class _Bucket:
    """One bucket through one client, with botocore's errors translated to ours."""

    def __init__(self, client: Any, name: str, description: str) -> None:
        self.client = client
        self.name = name
        self.description = description

    @contextlib.contextmanager
    def translated(self, what: str) -> Iterator[None]:
        """Raise StorageUnavailable or StorageMisconfigured for what they mean; any
        other error (a missing key, a bad range) goes through as it is."""
        try:
            yield
        except ClientError as exc:
            code, status, message = _error_of(exc)
            if code in _UNAVAILABLE_CODES or status >= 500:
                raise StorageUnavailable(f"{self.description}: {what}: {code}") from exc
            if code in _REFUSED_CODES or status == 403:
                raise StorageMisconfigured(
                    f"{self.description}: {what} refused: {code} ({message})"
                ) from exc
            raise
        except (BotoConnectionError, HTTPClientError, IncompleteReadError) as exc:
            # aiobotocore reports aiohttp's connection errors and timeouts as these.
            raise StorageUnavailable(f"{self.description}: {what}: {exc}") from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageMisconfigured(f"{self.description}: {what}: {exc}") from exc

    async def delete(self, keys: list[str]) -> None:
        """Delete `keys` with DeleteObjects, a batch at a time; missing keys are fine."""
        for first in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[first : first + DELETE_BATCH]]
            with self.translated(f"deleting {len(batch)} objects"):
                answer = await self.client.delete_objects(
                    Bucket=self.name, Delete={"Objects": batch, "Quiet": True}
                )
            failures = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failures:
                code = failures[0].get("Code", "")
                error = StorageMisconfigured if code in _REFUSED_CODES else StorageUnavailable
                raise error(f"{self.description}: deleting {failures[0].get('Key')}: {code}")

    async def keys_under(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every object whose key starts with `prefix` (ListObjectsV2, page by page)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        with self.translated(f"listing {prefix}"):
            async for page in pages:
                for entry in page.get("Contents", []):
                    yield entry

    async def delete_under(self, *prefixes: str) -> None:
        keys = [entry["Key"] for prefix in prefixes async for entry in self.keys_under(prefix)]
        await self.delete(keys)


class S3Upload:
    """A file written to `key` as it arrives: a multipart upload begun with the first full
    part, or one PutObject if the whole file is smaller than a part. Holds one part at most
    (plus the chunk being written)."""

    def __init__(self, bucket: _Bucket, key: str, part_bytes: int) -> None:
        self._bucket = bucket
        self._key = key
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = 0
        self._finishing = False  # from then on the object may exist, whatever `finish` said
        self._broken = False  # a write failed or was cancelled half-way: only `abort` remains
        self._aborted = False

    async def write(self, chunk: bytes) -> None:
        self._expect_open()
        self._buffer += chunk
        self._size += len(chunk)
        if len(self._buffer) < self._part_bytes:
            return
        try:
            while len(self._buffer) >= self._part_bytes:
                part, self._buffer = self._buffer, bytearray()
                if len(part) > self._part_bytes:
                    self._buffer = part[self._part_bytes :]
                    del part[self._part_bytes :]
                await self._send(part)
        except BaseException:
            self._broken = True
            raise

    async def finish(self) -> int:
        self._expect_open()
        self._finishing = True
        s3, name, key = self._bucket.client, self._bucket.name, self._key
        try:
            if self._upload_id is None:
                with self._bucket.translated(f"writing {key}"):
                    await s3.put_object(
                        Bucket=name,
                        Key=key,
                        Body=io.BytesIO(self._buffer),
                        ContentType=content_type(key),
                    )
            else:
                if self._buffer:
                    await self._send(self._buffer)  # the last part may be smaller
                with self._bucket.translated(f"completing {key}"):
                    await s3.complete_multipart_upload(
                        Bucket=name,
                        Key=key,
                        UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
        except BaseException:
            self._broken = True
            raise
        self._buffer = bytearray()
        return self._size

    async def abort(self) -> None:
        """End the multipart upload and delete the object if it was made. If the store is
        away this logs and returns (a later call tries again; the sweep's
        `abort_stale_uploads` and `holders` end what is left)."""
        if self._aborted:
            return
        self._buffer = bytearray()
        s3, name, key = self._bucket.client, self._bucket.name, self._key
        try:
            if self._upload_id is not None:
                try:
                    with self._bucket.translated(f"aborting the upload of {key}"):
                        await s3.abort_multipart_upload(
                            Bucket=name, Key=key, UploadId=self._upload_id
                        )
                except ClientError as exc:
                    if _error_of(exc)[0] != "NoSuchUpload":  # completed, or aborted already
                        raise
            if self._finishing:
                with self._bucket.translated(f"deleting {key}"):
                    await s3.delete_object(Bucket=name, Key=key)
        except (StorageUnavailable, StorageMisconfigured) as exc:
            log.warning("could not abort the upload of %s, the sweep will: %s", key, exc)
            return
        self._aborted = True

    async def _send(self, part: bytearray) -> None:
        s3, name, key = self._bucket.client, self._bucket.name, self._key
        if self._upload_id is None:
            with self._bucket.translated(f"starting the upload of {key}"):
                started = await s3.create_multipart_upload(
                    Bucket=name, Key=key, ContentType=content_type(key)
                )
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        # A file object, not bytes: aiohttp warns that a large bytes body blocks the loop.
        with self._bucket.translated(f"writing part {number} of {key}"):
            sent = await s3.upload_part(
                Bucket=name,
                Key=key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=io.BytesIO(part),
            )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def _expect_open(self) -> None:
        if self._broken or self._finishing or self._aborted:
            raise RuntimeError(f"the upload of {self._key} is over: only abort() remains")


@dataclass(frozen=True)
class _Tail:
    """The object holding a resumable upload's bytes short of a whole part."""

    key: str
    size: int


@dataclass(frozen=True)
class _ResumableState:
    """What `Resumable.handle` holds in a bucket: the multipart upload, its kept parts in
    order as (number, ETag, size), and the tail after them (None when the bytes end on a
    whole part)."""

    upload_id: str
    parts: tuple[tuple[int, str, int], ...] = ()
    tail: _Tail | None = None

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.parts) + (self.tail.size if self.tail else 0)

    def resumable(self, location: str) -> Resumable:
        tail = None if self.tail is None else {"key": self.tail.key, "size": self.tail.size}
        handle = {"upload_id": self.upload_id, "parts": [list(p) for p in self.parts], "tail": tail}
        return Resumable(location, self.size, json.dumps(handle, separators=(",", ":")))

    @classmethod
    def of(cls, upload: Resumable) -> _ResumableState:
        """The state in `upload.handle`; ValueError if it is not one, or if its bytes do
        not add up to `upload.offset`."""
        try:
            held = json.loads(upload.handle)
            tail = held["tail"]
            state = cls(
                str(held["upload_id"]),
                tuple((int(number), str(etag), int(size)) for number, etag, size in held["parts"]),
                None if tail is None else _Tail(str(tail["key"]), int(tail["size"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{upload.location}: not a bucket's resumable upload") from exc
        if state.size != upload.offset:
            raise ValueError(
                f"{upload.location}: the handle keeps {state.size} bytes, not {upload.offset}"
            )
        return state


class _NextParts:
    """A multipart upload continued from `parts`: `write` sends every whole part of
    `part_bytes` as the next part number; the bytes after the last one wait in `rest`.
    Holds one part at most (plus the chunk being written), as S3Upload does."""

    def __init__(
        self,
        bucket: _Bucket,
        key: str,
        upload_id: str,
        parts: tuple[tuple[int, str, int], ...],
        part_bytes: int,
    ) -> None:
        self._bucket = bucket
        self._key = key
        self._upload_id = upload_id
        self._part_bytes = part_bytes
        self.parts = list(parts)
        self.rest = bytearray()

    async def write(self, chunk: bytes | bytearray) -> None:
        self.rest += chunk
        while len(self.rest) >= self._part_bytes:
            part, self.rest = self.rest, bytearray()
            if len(part) > self._part_bytes:
                self.rest = part[self._part_bytes :]
                del part[self._part_bytes :]
            await self.send(part)

    async def send(self, part: bytearray) -> None:
        """Send `part` as the next part number (the last one may be short of a part)."""
        number = len(self.parts) + 1
        bucket = self._bucket
        with _upload_kept(self._key), bucket.translated(f"writing part {number} of {self._key}"):
            sent = await bucket.client.upload_part(
                Bucket=bucket.name,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=io.BytesIO(part),
            )
        self.parts.append((number, sent["ETag"], len(part)))


class S3Files:
    """`SessionFiles` whose locations are keys in one bucket, under `prefix`."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        part_bytes: int = DEFAULT_PART_BYTES,
        fetch_parallelism: int = 4,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's minimum)")
        if fetch_parallelism < 1:
            raise ValueError("fetch_parallelism must be at least 1")
        self._bucket_name = bucket
        self._prefix = prefix.strip("/")
        self._root = f"{self._prefix}/" if self._prefix else ""
        # Read here as botocore would, to know whether this is another store than AWS's.
        self._endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        self._region = region
        self._credentials = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
        self._part_bytes = part_bytes
        self._fetch_parallelism = fetch_parallelism
        self._stack: contextlib.AsyncExitStack | None = None
        self._opened: _Bucket | None = None

    async def open(self) -> S3Files:
        """Create the client (it keeps its connections until `close`)."""
        config = AioConfig(
            signature_version="s3v4",
            # Other stores (SeaweedFS, MinIO, GCS) serve buckets as paths, not host names.
            s3={"addressing_style": "path" if self._endpoint_url else "auto"},
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
            retries={"mode": "standard", "max_attempts": ATTEMPTS},
            # botocore's newer default checksums (CRC trailers on every upload) are not
            # understood by every S3-compatible store; send and check them only when
            # an operation requires it.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(10, 2 * self._fetch_parallelism),
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=self._region,
                config=config,
                **self._credentials,
            )
        )
        self._stack = stack
        self._opened = _Bucket(client, self._bucket_name, self.description)
        return self

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._opened = None

    @property
    def description(self) -> str:
        where = f"s3://{self._bucket_name}/{self._prefix}".rstrip("/")
        return f"{where} ({self._endpoint_url or 'AWS'})"

    @property
    def local(self) -> bool:
        return False

    @property
    def bucket(self) -> str:
        return self._bucket_name

    @property
    def prefix(self) -> str:
        """The key prefix, without slashes at either end ("" for none)."""
        return self._prefix

    def upload_location(self, session_id: str, filename: str) -> str:
        return f"{self._upload_folder(session_id)}{source_name(filename)}"

    def artifacts_location(self, session_id: str) -> str:
        return f"{self._root}artifacts/{_plain(session_id)}/"

    def artifact(self, artifacts: str, name: str) -> str | None:
        relative = inside(name)
        return None if relative is None else f"{_folder(artifacts)}{relative}"

    async def check(self) -> None:
        bucket = self._bucket
        key = f"{self._root}.write-check-{uuid.uuid4().hex}"
        content = f"write check {key}".encode()
        with bucket.translated("writing a check object"):
            await bucket.client.put_object(Bucket=bucket.name, Key=key, Body=content)
        try:
            with bucket.translated("reading the check object back"):
                answer = await bucket.client.get_object(Bucket=bucket.name, Key=key)
                async with answer["Body"] as body:
                    read = await body.read()
            if read != content:
                raise StorageMisconfigured(
                    f"{self.description}: the check object read back differs from what was written"
                )
        finally:
            with bucket.translated("deleting the check object"):
                await bucket.client.delete_object(Bucket=bucket.name, Key=key)

    async def start_upload(self, location: str) -> S3Upload:
        return S3Upload(self._bucket, location, self._part_bytes)

    async def probe_source(self, location: str) -> str:
        return await self._presigned(location, PROBE_URL_SECONDS)

    async def bring_local(self, location: str, scratch: Path) -> Path:
        """Fetch with `fetch_parallelism` ranged GETs at once, each written at its offset."""
        found = await self.stat(location)
        if found is None:
            raise FileNotFoundError(location)
        target = scratch / posixpath.basename(location)
        await asyncio.to_thread(_sized_file, target, found.size)

        async def fetch(start: int) -> None:
            end = min(start + RANGE_BYTES, found.size)
            async with self._body(location, start, end) as body:
                data = await body.read()
            if len(data) != end - start:  # the object changed or was cut short meanwhile
                raise StorageUnavailable(f"{self.description}: {location}: short range read")
            await asyncio.to_thread(_write_at, target, data, start)

        try:
            await _each_at_most(self._fetch_parallelism, fetch, range(0, found.size, RANGE_BYTES))
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    async def bring_local_streamed(self, location: str, scratch: Path) -> Path:
        """`bring_local` with one plain GET streamed to the file (to compare the two)."""
        target = scratch / posixpath.basename(location)
        try:
            async with self._body(location) as body:
                # A buffered file: closing it waits for a write still running in its thread.
                with open(target, "wb") as out:  # noqa: ASYNC230 - writes in a thread
                    async for chunk in body.iter_chunks(STREAM_CHUNK_BYTES):
                        await asyncio.to_thread(out.write, chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    def worker_output(self, artifacts: str, scratch: Path) -> Path:
        return scratch / "artifacts"

    async def keep_artifacts(self, folder: Path, artifacts: str) -> None:
        names = await asyncio.to_thread(_files_under, folder)

        async def keep(name: str) -> None:
            await self._put_file(folder / name, f"{_folder(artifacts)}{name}")

        await _each_at_most(KEEP_PARALLELISM, keep, names)

    async def discard_artifacts(self, artifacts: str) -> None:
        await self._bucket.delete_under(_folder(artifacts))

    async def stat(self, location: str) -> StoredFile | None:
        bucket = self._bucket
        try:
            with bucket.translated(f"looking up {location}"):
                head = await bucket.client.head_object(Bucket=bucket.name, Key=location)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return StoredFile(
            location,
            head["ContentLength"],
            etag=head.get("ETag"),
            last_modified=head.get("LastModified"),
        )

    async def read(self, location: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        async with self._body(location, start, end) as body:
            async for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                yield chunk

    async def signed_url(self, location: str, seconds: int) -> str | None:
        return await self._presigned(location, seconds)

    async def remove_session(self, upload: str, artifacts: str) -> None:
        keys = [upload] + [
            entry["Key"] async for entry in self._bucket.keys_under(_folder(artifacts))
        ]
        await self._bucket.delete(keys)

    async def holders(self) -> dict[str, datetime]:
        found: dict[str, datetime] = {}
        for kind in ("uploads/", "artifacts/"):
            base = f"{self._root}{kind}"
            async for entry in self._bucket.keys_under(base):
                session_id, slash, _ = entry["Key"][len(base) :].partition("/")
                if not slash:
                    continue  # not a session's file
                changed = entry["LastModified"]
                found[session_id] = max(changed, found.get(session_id, changed))
        return found

    async def remove_orphan(self, session_id: str) -> None:
        await self._bucket.delete_under(
            self._upload_folder(session_id),
            self.artifacts_location(session_id),
            f"{self._root}tus/{_plain(session_id)}/",
        )

    async def abort_stale_uploads(self, started_before: datetime) -> int:
        """End the unfinished multipart uploads under the prefix begun before
        `started_before` (timezone-aware); how many were ended.

        Resumable uploads are multipart uploads too, so they end the same way; their tail
        objects written before `started_before` go as well (a tail is written after its
        upload began, so its upload is among those ended; they are not counted)."""
        bucket = self._bucket
        pages = bucket.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket.name, Prefix=self._root
        )
        ended = 0
        with bucket.translated("listing unfinished uploads"):
            async for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] >= started_before:
                        continue
                    try:
                        await bucket.client.abort_multipart_upload(
                            Bucket=bucket.name, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as exc:
                        if _error_of(exc)[0] != "NoSuchUpload":  # finished meanwhile
                            raise
                        continue
                    ended += 1
        await bucket.delete(
            [
                entry["Key"]
                async for entry in bucket.keys_under(f"{self._root}tus/")
                if entry["LastModified"] < started_before
            ]
        )
        return ended

    async def begin_resumable(self, location: str) -> Resumable:
        bucket = self._bucket
        with bucket.translated(f"starting the upload of {location}"):
            started = await bucket.client.create_multipart_upload(
                Bucket=bucket.name, Key=location, ContentType=content_type(location)
            )
        return _ResumableState(started["UploadId"]).resumable(location)

    async def append_resumable(self, upload: Resumable, chunks: AsyncIterator[bytes]) -> Resumable:
        """The input's tail, then the chunks, as whole parts after the input's parts; what
        is left becomes a new tail. The tails of no state (a crashed or failed append's)
        are deleted before the new one is written, so at most two exist: the input's and
        the new one. FileNotFoundError if the multipart upload or the tail is gone."""
        state = _ResumableState.of(upload)
        first = await _first_bytes(chunks)
        if not first:
            return upload  # nothing to keep: no request at all
        parts = _NextParts(
            self._bucket, upload.location, state.upload_id, state.parts, self._part_bytes
        )
        if state.tail is not None:
            parts.rest = await self._tail_bytes(state.tail)  # less than a part: nothing sent
        await parts.write(first)
        async for chunk in chunks:
            await parts.write(chunk)
        kept = _ResumableState(state.upload_id, tuple(parts.parts))
        offset = kept.size + len(parts.rest)
        await self._delete_tails(upload.location, keep=state.tail)
        if parts.rest:
            kept = _ResumableState(
                state.upload_id,
                kept.parts,
                await self._put_tail(upload.location, offset, parts.rest),
            )
        return kept.resumable(upload.location)

    async def finish_resumable(self, upload: Resumable) -> None:
        """The tail as the last part, then CompleteMultipartUpload (an empty file is one
        PutObject, its upload aborted); the tails go last. Safe to repeat once the file is
        whole; FileNotFoundError if its bytes are gone."""
        state = _ResumableState.of(upload)
        bucket = self._bucket
        location = upload.location
        try:
            parts = _NextParts(bucket, location, state.upload_id, state.parts, self._part_bytes)
            if state.tail is not None:
                await parts.send(await self._tail_bytes(state.tail))
            if parts.parts:
                with _upload_kept(location), bucket.translated(f"completing {location}"):
                    await bucket.client.complete_multipart_upload(
                        Bucket=bucket.name,
                        Key=location,
                        UploadId=state.upload_id,
                        MultipartUpload={
                            "Parts": [
                                {"PartNumber": number, "ETag": etag}
                                for number, etag, _ in parts.parts
                            ]
                        },
                    )
            else:
                with bucket.translated(f"writing {location}"):
                    await bucket.client.put_object(
                        Bucket=bucket.name,
                        Key=location,
                        Body=io.BytesIO(b""),
                        ContentType=content_type(location),
                    )
                await self._abort_multipart(location, state.upload_id)
        except FileNotFoundError:
            # A finish that completed the upload, then died before its record said so.
            found = await self.stat(location)
            if found is None or found.size != upload.offset:
                raise
        await self._delete_tails(location)

    async def abort_resumable(self, upload: Resumable) -> None:
        """AbortMultipartUpload, then delete the tails and the object (if a finish made
        it); missing ones are fine, so this is safe to repeat."""
        state = _ResumableState.of(upload)
        await self._abort_multipart(upload.location, state.upload_id)
        await self._delete_tails(upload.location)
        await self._bucket.delete([upload.location])

    @property
    def _bucket(self) -> _Bucket:
        if self._opened is None:
            raise RuntimeError("S3Files is not open: await open() first")
        return self._opened

    def _upload_folder(self, session_id: str) -> str:
        return f"{self._root}uploads/{_plain(session_id)}/"

    def _tails_folder(self, location: str) -> str:
        """Where the tails of the resumable upload to `location` go: tus/<id>/tails/ for
        a session's upload (so `remove_orphan` finds them), else tus/<hash>/tails/."""
        uploads = f"{self._root}uploads/"
        inner = location[len(uploads) :] if location.startswith(uploads) else ""
        session_id, _, name = inner.partition("/")
        if not name or "/" in name or session_id in ("", ".", ".."):
            session_id = hashlib.sha256(location.encode()).hexdigest()[:32]
        return f"{self._root}tus/{session_id}/tails/"

    async def _tail_bytes(self, tail: _Tail) -> bytearray:
        """The bytes of `tail` (less than a part); FileNotFoundError if it is gone,
        StorageUnavailable if it holds fewer or more than its state says."""
        whole = bytearray()
        async with self._body(tail.key) as body:
            async for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                whole += chunk
        if len(whole) != tail.size:
            raise StorageUnavailable(
                f"{self.description}: {tail.key}: {len(whole)} bytes, not {tail.size}"
            )
        return whole

    async def _put_tail(self, location: str, offset: int, data: bytearray) -> _Tail:
        bucket = self._bucket
        key = f"{self._tails_folder(location)}{offset}-{uuid.uuid4().hex}"
        with bucket.translated(f"writing {key}"):
            await bucket.client.put_object(Bucket=bucket.name, Key=key, Body=io.BytesIO(data))
        return _Tail(key, len(data))

    async def _delete_tails(self, location: str, keep: _Tail | None = None) -> None:
        """Delete the tails of the upload to `location`, but `keep`."""
        folder = self._tails_folder(location)
        spare = None if keep is None else keep.key
        found = [entry["Key"] async for entry in self._bucket.keys_under(folder)]
        await self._bucket.delete([key for key in found if key != spare])

    async def _abort_multipart(self, location: str, upload_id: str) -> None:
        bucket = self._bucket
        try:
            with bucket.translated(f"aborting the upload of {location}"):
                await bucket.client.abort_multipart_upload(
                    Bucket=bucket.name, Key=location, UploadId=upload_id
                )
        except ClientError as exc:
            if _error_of(exc)[0] != "NoSuchUpload":  # completed, or aborted already
                raise

    @contextlib.asynccontextmanager
    async def _body(
        self, location: str, start: int | None = None, end: int | None = None
    ) -> AsyncIterator[Any]:
        """The streamed body of `location`, or of its bytes `start` to `end` (exclusive);
        FileNotFoundError if there is none, and errors while reading it translated too."""
        bucket = self._bucket
        ranged = {} if start is None or end is None else {"Range": f"bytes={start}-{end - 1}"}
        with bucket.translated(f"reading {location}"):
            try:
                answer = await bucket.client.get_object(Bucket=bucket.name, Key=location, **ranged)
            except ClientError as exc:
                if _missing(exc):
                    raise FileNotFoundError(location) from None
                raise
            async with answer["Body"] as body:
                yield body

    async def _presigned(self, location: str, seconds: int) -> str:
        if not 0 < seconds <= MAX_SIGNED_SECONDS:
            raise ValueError(f"a signed URL lives 1 to {MAX_SIGNED_SECONDS} seconds")
        bucket = self._bucket
        with bucket.translated(f"signing a URL of {location}"):
            url: str = await bucket.client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket.name, "Key": location}, ExpiresIn=seconds
            )
        return url

    async def _put_file(self, path: Path, key: str) -> None:
        """Store one local file: one PutObject, or a multipart upload if it is large."""
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size < self._part_bytes:
            bucket = self._bucket
            data = await asyncio.to_thread(path.read_bytes)
            with bucket.translated(f"writing {key}"):
                await bucket.client.put_object(
                    Bucket=bucket.name,
                    Key=key,
                    Body=io.BytesIO(data),
                    ContentType=content_type(key),
                )
            return
        upload = S3Upload(self._bucket, key, self._part_bytes)
        try:
            # A buffered file: closing it waits for a read still running in its thread.
            with open(path, "rb") as source:  # noqa: ASYNC230 - reads in a thread
                while chunk := await asyncio.to_thread(source.read, STREAM_CHUNK_BYTES):
                    await upload.write(chunk)
            await upload.finish()
        except BaseException:
            await upload.abort()
            raise

    def __repr__(self) -> str:
        return f"<S3Files {self.description}>"


def _error_of(exc: ClientError) -> tuple[str, int, str]:
    """The error code, HTTP status and message of a ClientError."""
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), int(status), str(error.get("Message", ""))


def _missing(exc: ClientError) -> bool:
    return _error_of(exc)[0] in _MISSING_CODES


@contextlib.contextmanager
def _upload_kept(key: str) -> Iterator[None]:
    """Raise FileNotFoundError where S3 says a resumable upload's multipart upload is
    gone (aborted, swept, completed): a retry cannot bring its parts back."""
    try:
        yield
    except ClientError as exc:
        if _error_of(exc)[0] != "NoSuchUpload":
            raise
        raise FileNotFoundError(f"{key}: the multipart upload is gone") from None


async def _first_bytes(chunks: AsyncIterator[bytes]) -> bytes:
    """The first chunk of `chunks` that is not empty (b"" if none); the rest stay in it."""
    async for chunk in chunks:
        if chunk:
            return chunk
    return b""


def _plain(session_id: str) -> str:
    """`session_id`, refused if it would not be one segment of a key."""
    if not session_id or "/" in session_id or session_id in (".", ".."):
        raise ValueError(f"not a session id: {session_id!r}")
    return session_id


def _folder(prefix: str) -> str:
    """A key prefix that ends with "/" (so `a/1` never matches `a/10/...`)."""
    return prefix if prefix.endswith("/") else f"{prefix}/"


def _sized_file(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _write_at(path: Path, data: bytearray, offset: int) -> None:
    """Write `data` at `offset` of the existing file `path` (its own descriptor, so a
    write still running in its thread when the fetch is cancelled touches only `path`)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def _files_under(folder: Path) -> list[str]:
    """The regular files under `folder` as sorted relative POSIX names (links skipped)."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    )


async def _each_at_most(
    limit: int, work: Callable[[T], Awaitable[None]], items: Iterable[T]
) -> None:
    """`work` on every item, `limit` at a time. The first failure cancels the others and is
    raised; a cancelled caller cancels them all, and returns only once they have ended."""
    todo = iter(items)

    async def lane() -> None:
        for item in todo:  # the lanes share one iterator: each takes the next item
            await work(item)

    tasks = [asyncio.ensure_future(lane()) for _ in range(limit)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
