"""Reading a multipart upload: the file streamed into the file store, the text fields.

The body is read part by part with `read_chunk` and handed to the store's `Upload` as it
arrives (a file written in a thread, or a multipart upload into a bucket), so a 2 GiB
upload never sits in memory and never stalls the event loop; the size limit is enforced
while streaming. The store picks the name (`source.<ext>`); the client's filename is
only metadata, made harmless by `safe_filename`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from server.storage.files import Upload
from server.storage.local import DiskFull
from server.web.responses import ApiError

FILE_FIELDS = ("file", "video")
# Large reads keep the per-chunk overhead (one thread hop per write) negligible.
CHUNK_BYTES = 1024 * 1024
# Text fields are small JSON or words; anything bigger is a mistake, not a parameter.
MAX_FIELD_BYTES = 64 * 1024
MAX_FILENAME_CHARS = 120
# What aiohttp's multipart reader raises for a body it cannot parse: a part header line
# over 8 KiB or with a NUL in it is a BadHttpMessage, the client's fault like the others.
_MALFORMED = (ValueError, AssertionError, RuntimeError, BadHttpMessage)


@dataclass
class ReceivedForm:
    """A multipart body once read: the file's upload (finished) and the text fields."""

    upload: Upload | None = None
    size: int = 0
    filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def too_large(max_bytes: int) -> ApiError:
    """The 413 of an upload over `max_bytes`."""
    return ApiError(
        413, "Upload too large", f"The upload limit is {max_bytes // (1024 * 1024)} MiB"
    )


async def receive_form(
    request: web.Request,
    open_upload: Callable[[str], Awaitable[Upload]],
    *,
    max_bytes: int,
    before_file: Callable[[dict[str, str]], object] = lambda fields: None,
    on_bytes: Callable[[int], None] = lambda size: None,
) -> ReceivedForm:
    """Read a multipart body: exactly one file (field `file` or `video`) goes to the
    upload that `open_upload(safe filename)` starts.

    Text fields may come before or after the file. `before_file` sees the fields read so
    far just before the file is streamed, to refuse bad input early; `on_bytes` is told of
    every chunk written. If this raises, the upload it started has been aborted.
    """
    if request.content_type != "multipart/form-data":
        raise ApiError(400, "No file", "Send the video as multipart/form-data in a `file` field")
    form = ReceivedForm()
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as exc:
        raise _malformed(exc) from None
    try:
        while (part := await _next_part(reader)) is not None:
            await _receive_part(part, form, open_upload, max_bytes, before_file, on_bytes)
    except BaseException:
        if form.upload is not None:
            await form.upload.abort()
        raise
    if form.upload is None:
        raise ApiError(400, "No file", "Send the video in a `file` (or `video`) field")
    return form


async def _receive_part(
    part: Any,
    form: ReceivedForm,
    open_upload: Callable[[str], Awaitable[Upload]],
    max_bytes: int,
    before_file: Callable[[dict[str, str]], object],
    on_bytes: Callable[[int], None],
) -> None:
    """One part of the body: the file streamed into a finished upload, or a text field."""
    if not isinstance(part, BodyPartReader):
        raise ApiError(400, "Bad request", "Nested multipart bodies are not accepted")
    if part.name in FILE_FIELDS:
        if form.upload is not None:
            raise ApiError(400, "More than one file", "Send exactly one video per upload")
        before_file(form.fields)
        upload = await open_upload(safe_filename(part.filename))
        try:
            size = await _save(part, upload, max_bytes, on_bytes)
            if size == 0 and not part.filename:
                # What a browser form sends when no file was chosen: no file, not a bad one.
                await upload.abort()
                return
        except BaseException:
            await upload.abort()
            raise
        form.upload, form.size, form.filename = upload, size, safe_filename(part.filename)
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
    part: BodyPartReader, upload: Upload, max_bytes: int, on_bytes: Callable[[int], None]
) -> int:
    """Stream one part into `upload` and finish it; 413 the moment it passes `max_bytes`,
    507 on a full disk."""
    size = 0
    try:
        while chunk := await _read_chunk(part):
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            await upload.write(chunk)
            on_bytes(len(chunk))
        return await upload.finish()
    except DiskFull:
        raise ApiError(
            507, "Insufficient storage", "The server has no room for this upload"
        ) from None


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
