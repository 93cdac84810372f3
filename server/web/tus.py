"""Resumable uploads: a tus 1.0.0 server at `/api/v1/video/uploads/`, from the protocol's
specification (tus.io, protocols/resumable-upload), with the creation,
creation-with-upload, termination and expiration extensions.

Written here rather than taken from a library: the one tus server for aiohttp
(`aiohttp-tus`) was last released in 2022 and writes to local disk only, while an upload
here must grow on any node, in a bucket or under DATA_DIR. So this module speaks the
protocol and nothing else: an upload's record (`server.state.tus_records`: length,
offset, what it asks for) lives where sessions live, its bytes where files live
(`SessionFiles.append_resumable`), and the request that delivers the last byte turns it
into a session through the same `UploadFlow` as the multipart upload. From then on the
client has a `sessionId` (the `Session-Id` header, also on `HEAD`, and `GET`'s body) and
the v1 API is unchanged.

An interrupted PATCH keeps every byte that arrived: the client's `HEAD` then says where
to go on. One request at a time writes an upload (the record's lock, leased on a
cluster); another gets 423.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import format_datetime

from aiohttp import ClientPayloadError, hdrs, web

from server.state.models import InvalidVideo, utcnow
from server.state.tus_records import TusRecord, TusRecords, UploadBusy
from server.storage.files import SessionFiles
from server.web.bodies import TusUploadBody, json_response
from server.web.inputs import upload_id_of
from server.web.multipart import safe_filename, too_large
from server.web.responses import ApiError
from server.web.upload_flow import UploadFlow

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration"
OFFSET_STREAM = "application/offset+octet-stream"
SESSION_ID_HEADER = "Session-Id"
# The headers a browser client must send and read (CORS).
REQUEST_HEADERS = ("Tus-Resumable", "Upload-Length", "Upload-Metadata", "Upload-Offset")
RESPONSE_HEADERS = (
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    SESSION_ID_HEADER,
)
READ_BYTES = 1024 * 1024
# The metadata keys an upload may carry, as the multipart upload's form fields.
METADATA_KEYS = ("filename", "analysis_type", "params", "webhook_url")
# What a client that vanished mid-body looks like to the reader.
_CUT_OFF = (ConnectionError, ClientPayloadError)


@dataclass(frozen=True)
class TusLimits:
    max_bytes: int
    expires_after: timedelta


class TusUploads:
    """The resumable uploads of one node: built once per app with what they need."""

    def __init__(
        self,
        records: TusRecords,
        files: SessionFiles,
        flow: UploadFlow,
        limits: TusLimits,
        *,
        on_bytes: Callable[[int], None] = lambda size: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._records = records
        self._files = files
        self._flow = flow
        self._limits = limits
        self._on_bytes = on_bytes
        self._clock = clock

    # ---- the protocol's requests --------------------------------------------------------

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                "Tus-Resumable": TUS_VERSION,
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": EXTENSIONS,
                "Tus-Max-Size": str(self._limits.max_bytes),
            },
        )

    async def create(self, request: web.Request) -> web.Response:
        """POST: a new upload (201 + Location); with a body, its first bytes too."""
        _check_version(request)
        if "Upload-Defer-Length" in request.headers:
            raise _error(400, "This server needs Upload-Length when the upload is created")
        length = _non_negative(request, "Upload-Length")
        if length > self._limits.max_bytes:
            raise too_large(self._limits.max_bytes)
        metadata = _metadata(request.headers.get("Upload-Metadata", ""))
        job = await self._flow.job_of(
            {name: value for name, value in metadata.items() if name != "filename"}
        )  # 400 before a byte, for what would refuse the session at the end
        if job.analysis_type is not None and not await self._flow.has_room():
            raise _error(503, "Too many jobs queued; try again later", retry_after=5)
        upload_id = str(uuid.uuid4())
        filename = safe_filename(metadata.get("filename"))
        location = self._files.upload_location(upload_id, filename)
        now = self._clock()
        # Its file exists before its record: till then only this tells the sweep that the
        # file belongs to an upload.
        with self._flow.owning(upload_id):
            record = TusRecord(
                id=upload_id,
                length=length,
                upload=await self._files.begin_resumable(location),
                expires_at=now + self._limits.expires_after,
                created_at=now,
                filename=filename,
                analysis_type=job.analysis_type.value if job.analysis_type else None,
                params=job.params,
                webhook_url=metadata.get("webhook_url") or None,
            )
            await self._records.create(record)
        headers = {
            hdrs.LOCATION: f"{request.path.rstrip('/')}/{upload_id}",
            "Upload-Expires": _http_date(record.expires_at),
        }
        if request.content_type == OFFSET_STREAM and request.body_exists:
            record = await self._append(request, record, 0)
            headers.update(self._progress_headers(record))
        log.info("tus upload %s created: %d bytes of %s", upload_id, length, filename)
        return web.Response(status=201, headers=_tus(headers))

    async def head(self, request: web.Request) -> web.Response:
        """HEAD: how many bytes the server has (where to resume)."""
        _check_version(request)
        record = await self._record(request)
        headers = {**self._progress_headers(record), hdrs.CACHE_CONTROL: "no-store"}
        return web.Response(status=200, headers=_tus(headers))

    async def describe(self, request: web.Request) -> web.Response:
        """GET: the same as HEAD, as JSON, for clients that are not tus clients."""
        record = await self._record(request)
        return json_response(
            TusUploadBody(
                upload_id=record.id,
                offset=record.offset,
                length=record.length,
                expires_at=record.expires_at,
                session_id=record.session_id,
            ),
            headers=_tus({hdrs.CACHE_CONTROL: "no-store"}),
        )

    async def patch(self, request: web.Request) -> web.Response:
        """PATCH: bytes at `Upload-Offset`; the last one makes the session."""
        _check_version(request)
        if request.content_type != OFFSET_STREAM:
            raise _error(415, f"Send the bytes as {OFFSET_STREAM}")
        offset = _non_negative(request, "Upload-Offset")
        record = await self._record(request)
        _check_offset(record, offset)
        if request.content_length is not None and offset + request.content_length > record.length:
            raise _error(413, f"The upload is {record.length} bytes; this would go past its end")
        record = await self._append(request, record, offset)
        return web.Response(status=204, headers=_tus(self._progress_headers(record)))

    async def terminate(self, request: web.Request) -> web.Response:
        """DELETE: the upload and its bytes go (a finished one's file is its session's)."""
        _check_version(request)
        record = await self._record(request, expired_too=True)
        try:
            async with self._records.writing(record.id):
                if record.session_id is None:
                    await self._files.abort_resumable(record.upload)
                await self._records.delete(record.id)
        except UploadBusy:
            raise _error(423, "The upload is being written by another request") from None
        return web.Response(status=204, headers=_tus({}))

    # ---- inside ------------------------------------------------------------------------

    async def _record(self, request: web.Request, *, expired_too: bool = False) -> TusRecord:
        upload_id = upload_id_of(request)
        record = await self._records.get(upload_id)
        if record is None:
            raise _error(404, f"No upload {upload_id}", title="Upload not found")
        if not expired_too and record.session_id is None and record.expires_at < self._clock():
            raise _error(410, f"Upload {upload_id} expired; start a new one", title="Gone")
        return record

    async def _append(self, request: web.Request, record: TusRecord, offset: int) -> TusRecord:
        """Take the request's bytes at `offset` under the upload's lock; finish if whole."""
        try:
            async with self._records.writing(record.id):
                current = await self._records.get(record.id)
                if current is None:
                    raise _error(404, f"No upload {record.id}", title="Upload not found")
                _check_offset(current, offset)
                if current.offset < current.length:
                    upload = await self._files.append_resumable(
                        current.upload, self._body(request, current.length - offset)
                    )
                    if not await self._records.advance(current.id, offset, upload):
                        raise _error(409, "The upload moved on meanwhile; HEAD it and resume")
                    current = replace(current, upload=upload)
                if current.complete and current.session_id is None:
                    current = await self._become_session(current)
                return current
        except UploadBusy:
            raise _error(423, "The upload is being written by another request") from None

    async def _body(self, request: web.Request, room: int) -> AsyncIterator[bytes]:
        """The request's bytes, at most `room` of them (413 past that), until it ends or
        its client is gone: what arrived before a cut is kept."""
        taken = 0
        try:
            async for chunk in request.content.iter_chunked(READ_BYTES):
                taken += len(chunk)
                if taken > room:
                    raise _error(413, "These bytes go past the upload's Upload-Length")
                self._on_bytes(len(chunk))
                yield chunk
        except _CUT_OFF:
            log.info("tus upload %s: client gone after %d bytes", request.path, taken)

    async def _become_session(self, record: TusRecord) -> TusRecord:
        """The whole upload becomes a session. Refused as a file (not a video, too long),
        it goes; refused for now (queue full, store away, client gone), it stays whole
        and the client's next PATCH or HEAD... tries again."""
        whole = await self._files.stat(record.upload.location)
        if whole is None or whole.size != record.length:  # not finished by an earlier try
            await self._files.finish_resumable(record.upload)
        try:
            job = await self._flow.job_of(_fields_of(record))
            session = await self._flow.become_session(
                record.id, record.upload.location, record.filename, record.length, job
            )
        except (InvalidVideo, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.code >= 500:
                raise
            await asyncio.shield(self._forget(record))
            raise
        await self._records.set_session(record.id, session.id)
        log.info("tus upload %s is session %s (%s)", record.id, session.id, session.status.value)
        return replace(record, session_id=session.id)

    async def _forget(self, record: TusRecord) -> None:
        """Remove a refused upload's file and record."""
        await self._files.remove_session(
            record.upload.location, self._files.artifacts_location(record.id)
        )
        await self._records.delete(record.id)

    def _progress_headers(self, record: TusRecord) -> dict[str, str]:
        headers = {
            "Upload-Offset": str(record.offset),
            "Upload-Length": str(record.length),
            "Upload-Expires": _http_date(record.expires_at),
        }
        if record.session_id is not None:
            headers[SESSION_ID_HEADER] = record.session_id
        return headers


def _fields_of(record: TusRecord) -> dict[str, str]:
    """The record's job as the form fields it was validated from at creation."""
    fields = {"params": json.dumps(record.params)} if record.params else {}
    if record.analysis_type is not None:
        fields["analysis_type"] = record.analysis_type
    if record.webhook_url:
        fields["webhook_url"] = record.webhook_url
    return fields


def _check_version(request: web.Request) -> None:
    given = request.headers.get("Tus-Resumable")
    if given != TUS_VERSION:
        raise ApiError(
            412,
            "Precondition failed",
            f"This server speaks tus {TUS_VERSION}; send Tus-Resumable: {TUS_VERSION}"
            + (f" (got {given!r})" if given else ""),
            headers={"Tus-Version": TUS_VERSION},
        )


def _check_offset(record: TusRecord, offset: int) -> None:
    if offset != record.offset:
        raise _error(
            409,
            f"Upload-Offset is {offset} but the server has {record.offset} bytes; "
            "HEAD the upload and resume from there",
            title="Conflict",
        )


def _non_negative(request: web.Request, header: str) -> int:
    raw = request.headers.get(header)
    if raw is None:
        raise _error(400, f"{header} is required")
    if not raw.isdigit():
        raise _error(400, f"{header} must be a whole number of bytes, got {raw!r}")
    return int(raw)


def _metadata(raw: str) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64(value)` pairs (a key alone has an empty
    value). Keys other than ours are ignored, as tus allows; Uppy's `name` stands for
    `filename` when that is not given."""
    pairs: dict[str, str] = {}
    for pair in (part.strip() for part in raw.split(",") if part.strip()):
        key, _, encoded = pair.partition(" ")
        if key in pairs:
            raise _error(400, f"Upload-Metadata gives {key!r} twice")
        pairs[key] = encoded.strip()
    if "filename" not in pairs and "name" in pairs:
        pairs["filename"] = pairs["name"]
    found: dict[str, str] = {}
    for key in METADATA_KEYS:
        if key not in pairs:
            continue
        try:
            found[key] = base64.b64decode(pairs[key], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _error(400, f"Upload-Metadata {key!r} is not base64 of UTF-8 text") from None
    return found


def _error(
    status: int, message: str, *, title: str | None = None, retry_after: int | None = None
) -> ApiError:
    headers = {"Tus-Resumable": TUS_VERSION}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return ApiError(status, title or _TITLES.get(status, "Bad request"), message, headers=headers)


_TITLES = {
    409: "Conflict",
    410: "Gone",
    413: "Upload too large",
    415: "Unsupported media type",
    423: "Locked",
    503: "Server busy",
}


def _tus(headers: dict[str, str]) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **headers}


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)
