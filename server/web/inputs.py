"""What a request names, read strictly: the path's session id, an index, one query value.

Each reader answers a clear 400 (through `ApiError`) for input it cannot use, naming the
part to fix; the handlers of every resource share them.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from server.web.responses import ApiError

# Where EventSource, <video> and <track>, which cannot send headers, put the API key.
ACCESS_TOKEN_QUERY = "access_token"
_CANONICAL_UUID4 = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


def session_id_of(request: web.Request) -> str:
    """The path's session id, or a 400 when it is not a UUID4 (any case; answered lower)."""
    return _uuid4_of(request.match_info["sessionId"], "session id")


def upload_id_of(request: web.Request) -> str:
    """The path's resumable upload id: as a session id, a UUID4 (else a 400)."""
    return _uuid4_of(request.match_info["uploadId"], "upload id")


def _uuid4_of(raw: str, what: str) -> str:
    if _CANONICAL_UUID4.fullmatch(raw):
        return raw  # the form every client echoes back: no need to parse it (polls are hot)
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != 4 or str(parsed) != raw.lower():
        raise ApiError(
            400, f"Invalid {what}", f"A{'n' if what[0] in 'aeiou' else ''} {what} is a UUID4 string"
        )
    return str(parsed)


def natural(raw: str) -> int | None:
    """0, 1, 2... written in plain ASCII digits, else None."""
    try:
        return int(raw) if raw.isascii() and raw.isdigit() else None
    except ValueError:  # over int()'s 4300-digit guard: no index or limit is that long
        return None


def check_query(request: web.Request, name: str) -> None:
    """A 400 naming query parameter `name` when it is given more than once or empty.

    A repeated filter (`?status=failed&status=bogus`) would otherwise be read by its first
    value only, and an empty one (`?limit=`) silently taken as absent.
    """
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(
            400, "Bad request", f"Query parameter {name} is given {len(values)} times; send it once"
        )
    if values == [""]:
        raise ApiError(
            400, "Bad request", f"Query parameter {name} is empty; give it a value or leave it out"
        )
