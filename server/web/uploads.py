"""Accepting a video: stream the multipart upload to disk, check it, make it a session.

The body is read part by part with `read_chunk` and written in a thread, so a 2 GiB
upload never sits in memory and never stalls the event loop; the size limit is enforced
while streaming. The server picks the path (`DATA_DIR/uploads/<id>/source.<ext>`); the
client's filename is only metadata. Whatever rejects an upload - size, params, probe,
length, a full queue, a vanished client - the session's directory goes with it, so a
rejected upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from protocol import (
    AnalysisType,
    params_from_form,
    parse_analysis_type,
    parse_params_json,
    validate_params,
)
from server.jobs.job_queue import RETRY_AFTER_SECONDS
from server.jobs.probe import ProbeService
from server.jobs.runner import JobRunner
from server.jobs.webhooks import WebhookDeliverer
from server.state.models import QueueFull, Session, SessionNotFound, SessionStatus, TooManyUploads
from server.state.paths import DataPaths
from server.state.sessions import Sessions
from server.web.responses import ApiError

FILE_FIELDS = ("file", "video")
# Large reads keep the per-chunk overhead (one thread hop per write) negligible.
CHUNK_BYTES = 1024 * 1024
# Text fields are small JSON or words; anything bigger is a mistake, not a parameter.
MAX_FIELD_BYTES = 64 * 1024
# Room for boundaries and text fields on top of the file when judging Content-Length.
FORM_OVERHEAD_BYTES = 1024 * 1024
MAX_FILENAME_CHARS = 120
_EXTENSION = re.compile(r"[a-z0-9]{1,5}")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# What aiohttp's multipart reader raises for a body it cannot parse: a part header line
# over 8 KiB or with a NUL in it is a BadHttpMessage, the client's fault like the others.
_MALFORMED = (ValueError, AssertionError, RuntimeError, BadHttpMessage)


@dataclass
class ReceivedForm:
    """A multipart body once read: where the file went and the text fields."""

    video_path: Path | None = None
    filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_video_seconds: float


class UploadSlots:
    """The uploads being received now: at most `limit` at once, and whose folders they own.

    The limit keeps a burst of large uploads from taking every connection and the disk's
    bandwidth; the registry tells the expiry sweep which folders without a session are
    still being written (a session is created only once its upload is complete).
    """

    # Uploads finish in seconds to minutes; a short wait is the honest hint.
    RETRY_AFTER_SECONDS = 5

    def __init__(self, limit: int, on_bytes: Callable[[int], None] | None = None) -> None:
        """`on_bytes(n)` is told of every chunk of n bytes an upload writes (for metrics)."""
        self._limit = limit
        self._ids: set[str] = set()
        self.on_bytes = on_bytes or (lambda size: None)

    @contextlib.contextmanager
    def claim(self, session_id: str) -> Iterator[None]:
        """Hold a slot for `session_id` while receiving; raises TooManyUploads when full."""
        if len(self._ids) >= self._limit:
            raise TooManyUploads(self.RETRY_AFTER_SECONDS)
        self._ids.add(session_id)
        try:
            yield
        finally:
            self._ids.discard(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


async def accept_upload(
    request: web.Request,
    *,
    sessions: Sessions,
    runner: JobRunner,
    paths: DataPaths,
    limits: UploadLimits,
    slots: UploadSlots,
    probes: ProbeService,
    fixed_type: AnalysisType | None = None,
    webhooks: WebhookDeliverer | None = None,
) -> Session:
    """Stream, validate and probe an upload; create its session and submit it if it has a type.

    `fixed_type` is the legacy endpoints' analysis type: their non-file fields are params.
    Without it, `analysis_type` and `params` come from the form and a missing type means the
    two-step flow (status `uploaded`); with `webhooks`, a `webhook_url` field is vetted
    and kept with the session. Raises ApiError or a domain error; never leaves files.
    """
    if not await runner.has_room():
        raise QueueFull(RETRY_AFTER_SECONDS)
    _check_declared_length(request, limits.max_bytes)
    session_id = str(uuid.uuid4())
    with slots.claim(session_id):
        return await _accept(
            request,
            session_id,
            sessions,
            runner,
            paths,
            limits,
            fixed_type,
            slots.on_bytes,
            webhooks,
            probes,
        )


async def _accept(
    request: web.Request,
    session_id: str,
    sessions: Sessions,
    runner: JobRunner,
    paths: DataPaths,
    limits: UploadLimits,
    fixed_type: AnalysisType | None,
    on_bytes: Callable[[int], None],
    webhooks: WebhookDeliverer | None,
    probes: ProbeService,
) -> Session:
    created = False
    try:
        form = await receive_form(
            request,
            paths.upload_dir(session_id),
            max_bytes=limits.max_bytes,
            before_file=lambda fields: _job_of(fields, fixed_type, complete=False),
            on_bytes=on_bytes,
        )
        analysis_type, params = _job_of(form.fields, fixed_type, complete=True)
        webhook = await webhooks.target(form.fields.get("webhook_url")) if webhooks else None
        assert form.video_path is not None  # receive_form raises without a file
        info = await probes.probe(form.video_path, form.filename)
        if info.duration_seconds > limits.max_video_seconds:
            raise ApiError(
                422,
                "Video too long",
                f"The video is {info.duration_seconds:.1f} s long; the limit is "
                f"{limits.max_video_seconds:g} s",
            )
        session = Session(
            id=session_id,
            status=SessionStatus.UPLOADED,
            video=info,
            upload_path=str(form.video_path),
            output_dir=str(paths.output_dir(session_id)),
            webhook=webhook,
        )
        await sessions.create(session, announce=analysis_type is None)
        created = True
        if analysis_type is not None:
            session = await runner.submit(session_id, analysis_type, params)
        return session
    except BaseException:
        # Also on cancellation: the client went away, and so does everything it sent.
        if created:
            with contextlib.suppress(SessionNotFound):
                await sessions.delete(session_id)
        # Not in a thread: this runs while the task may be cancelled, and it is one file.
        paths.remove_session_files(session_id)
        raise


def _check_declared_length(request: web.Request, max_bytes: int) -> None:
    """Refuse at once a body that says it is larger than any acceptable upload."""
    declared = request.content_length
    if declared is not None and declared > max_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(max_bytes)


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413, "Upload too large", f"The upload limit is {max_bytes // (1024 * 1024)} MiB"
    )


def _job_of(
    fields: dict[str, str], fixed_type: AnalysisType | None, *, complete: bool
) -> tuple[AnalysisType | None, dict[str, Any]]:
    """The analysis type and validated params the form asks for.

    Called with `complete=False` for the fields seen before the file, so bad params are
    refused before the video is streamed; the final call sees every field.
    """
    if fixed_type is not None:
        extra = {name: value for name, value in fields.items() if name != "params"}
        # An empty `params` field is the same as none (a form may always send the field).
        given = fields.get("params", "").strip() != ""
        if given and extra:
            raise ApiError(
                400,
                "Invalid parameters",
                "Give params either as one `params` JSON field or as individual fields, "
                f"not both (also got {', '.join(sorted(extra))})",
            )
        raw = parse_params_json(fields["params"]) if given else params_from_form(extra)
        return fixed_type, validate_params(fixed_type, raw)
    raw = parse_params_json(fields.get("params"))
    if "analysis_type" not in fields:
        if complete and raw:
            raise ApiError(
                400,
                "Invalid parameters",
                "params need an analysis_type; without one, send them to analyze later",
            )
        return None, {}
    analysis_type = parse_analysis_type(fields["analysis_type"].strip())
    return analysis_type, validate_params(analysis_type, raw)


async def receive_form(
    request: web.Request,
    folder: Path,
    *,
    max_bytes: int,
    before_file: Callable[[dict[str, str]], object] = lambda fields: None,
    on_bytes: Callable[[int], None] = lambda size: None,
) -> ReceivedForm:
    """Read a multipart body: exactly one file (field `file` or `video`) goes to `folder`.

    Text fields may come before or after the file. `before_file` sees the fields read so
    far just before the file is streamed, to refuse bad input early; `on_bytes` is told of
    every chunk written. The caller removes `folder` if this raises.
    """
    if request.content_type != "multipart/form-data":
        raise ApiError(400, "No file", "Send the video as multipart/form-data in a `file` field")
    form = ReceivedForm()
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as exc:
        raise _malformed(exc) from None
    while (part := await _next_part(reader)) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "Bad request", "Nested multipart bodies are not accepted")
        if part.name in FILE_FIELDS:
            if form.video_path is not None:
                raise ApiError(400, "More than one file", "Send exactly one video per upload")
            before_file(form.fields)
            path = folder / source_name(safe_filename(part.filename))
            size = await _save(part, path, max_bytes, on_bytes)
            if size == 0 and not part.filename:
                # What a browser form sends when no file was chosen: no file, not a bad one.
                path.unlink()
                continue
            form.video_path, form.filename = path, safe_filename(part.filename)
        elif part.filename is not None or not part.name:
            # safe_filename(None) is "video", an accepted field: name the nameless part as such.
            what = f"file field {safe_filename(part.name)!r}" if part.name else "nameless form part"
            raise ApiError(
                400, "Bad request", f"Unexpected {what}; send the video as `{FILE_FIELDS[0]}`"
            )
        elif part.name in form.fields:
            raise ApiError(400, "Bad request", f"Field {part.name!r} was given twice")
        else:
            form.fields[part.name] = await _read_text(part)
    if form.video_path is None:
        raise ApiError(400, "No file", "Send the video in a `file` (or `video`) field")
    return form


async def _next_part(reader: Any) -> Any:
    try:
        return await reader.next()
    except _MALFORMED as exc:
        raise _malformed(exc) from None


def _malformed(exc: Exception) -> ApiError:
    # BadHttpMessage's str() starts "400, message:"; its `message` is the useful part.
    detail = exc.message if isinstance(exc, BadHttpMessage) else exc
    return ApiError(400, "Bad request", f"Malformed multipart body: {detail}")


async def _save(
    part: BodyPartReader, path: Path, max_bytes: int, on_bytes: Callable[[int], None]
) -> int:
    """Stream one part to `path`; 413 the moment it passes `max_bytes`, 507 on a full disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    try:
        # A plain open, not aiofiles': an open run in a thread cannot be cancelled half-way,
        # so a client leaving at that moment would leak the handle. Closing a buffered file
        # waits for a write still running in its thread, so the file is never cut short.
        with open(path, "wb") as out:  # noqa: ASYNC230 - creating one file is one syscall
            while chunk := await _read_chunk(part):
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                await asyncio.to_thread(out.write, chunk)
                on_bytes(len(chunk))
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise ApiError(
                507, "Insufficient storage", "The server has no room for this upload"
            ) from None
        raise
    return size


async def _read_chunk(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(CHUNK_BYTES)
    except _MALFORMED as exc:
        raise _malformed(exc) from None


async def _read_text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await _read_chunk(part):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError(
                400, "Bad request", f"Field {part.name!r} is over {MAX_FIELD_BYTES} bytes"
            )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "Bad request", f"Field {part.name!r} is not UTF-8 text") from None


def safe_filename(raw: str | None) -> str:
    """The client's filename made harmless to store and show.

    Percent-escapes are decoded first (aiohttp and some other clients send names that
    way, browsers send raw UTF-8). Only the last path component survives (either slash);
    control, format and surrogate characters go, leading dots and spaces go, and the name
    is capped in length while keeping its extension. Anything left empty becomes "video".
    """
    if not raw:
        return "video"
    name = unquote(raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    name = name.strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = f"{dot}{ext}" if dot and stem and len(ext) <= 10 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep)].rstrip() + keep
    return name or "video"


def source_name(filename: str) -> str:
    """The server's name for an upload: "source" plus a short, plain extension if any."""
    _, dot, ext = filename.rpartition(".")
    ext = ext.lower()
    return f"source.{ext}" if dot and _EXTENSION.fullmatch(ext) else "source"
