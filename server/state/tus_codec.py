"""A tus upload's record as the JSON text the stores keep: the one codec of SQLite and Redis.

Times are written as ISO-8601 text in UTC with microseconds always present, so the texts
of two moments sort as the moments do (the SQLite store compares them in SQL). Fields
added to a record later are read with their defaults from texts written before them.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from server.state.tus_records import TusRecord
from server.storage.files import Resumable


def utc_text(moment: datetime) -> str:
    """`moment` as fixed-width ISO-8601 text in UTC; ValueError for a naive datetime,
    whose zone nobody could tell."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone")
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def tus_record_to_json(record: TusRecord) -> str:
    """The whole record as compact JSON."""
    return json.dumps(
        {
            "id": record.id,
            "length": record.length,
            "upload": {
                "location": record.upload.location,
                "offset": record.upload.offset,
                "handle": record.upload.handle,
            },
            "expires_at": utc_text(record.expires_at),
            "created_at": utc_text(record.created_at),
            "filename": record.filename,
            "analysis_type": record.analysis_type,
            "params": record.params,
            "webhook_url": record.webhook_url,
            "session_id": record.session_id,
        },
        separators=(",", ":"),
    )


def tus_record_from_json(text: str) -> TusRecord:
    """The record `tus_record_to_json` wrote; KeyError, TypeError or ValueError if the text
    is not one."""
    data: dict[str, Any] = json.loads(text)
    upload = data["upload"]
    return TusRecord(
        id=data["id"],
        length=data["length"],
        upload=Resumable(
            location=upload["location"], offset=upload["offset"], handle=upload.get("handle", "")
        ),
        expires_at=datetime.fromisoformat(data["expires_at"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        filename=data.get("filename", ""),
        analysis_type=data.get("analysis_type"),
        params=data.get("params") or {},
        webhook_url=data.get("webhook_url"),
        session_id=data.get("session_id"),
    )
