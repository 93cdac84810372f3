"""A session as the JSON text the stores keep: the one codec of the SQLite and Redis stores.

The text is the whole snapshot; its `results` are the worker's results object exactly as
`protocol.results` declares it (the JSON the worker sent), decoded back into that type.
Rows written before a field existed still load: each such field is read with its default.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from protocol import AnalysisType, VideoInfo, decode_results, results_json
from server.state.models import Session, SessionStatus
from server.state.webhook_delivery import WebhookDelivery


def session_to_json(session: Session) -> str:
    """The whole snapshot as JSON (timestamps ISO-8601 with their offset)."""
    return json.dumps(
        {
            "id": session.id,
            "status": session.status.value,
            "video": session.video.to_dict(),
            "upload_path": session.upload_path,
            "output_dir": session.output_dir,
            "analysis_type": session.analysis_type.value if session.analysis_type else None,
            "params": session.params,
            "progress": session.progress,
            "current_step": session.current_step,
            "error": session.error,
            "results": results_json(session.results) if session.results is not None else None,
            "attempts": session.attempts,
            "webhook": session.webhook.to_dict() if session.webhook else None,
            "created_at": session.created_at.isoformat(),
            "updated_at": session.updated_at.isoformat(),
        },
        separators=(",", ":"),
    )


def session_from_json(text: str) -> Session:
    """The snapshot `session_to_json` wrote; KeyError, TypeError or ValueError if it is not
    one (ResultsBroken, a ValueError, for results that do not fit their type)."""
    data: dict[str, Any] = json.loads(text)
    return Session(
        id=data["id"],
        status=SessionStatus(data["status"]),
        video=VideoInfo.from_dict(data["video"]),
        upload_path=data["upload_path"],
        output_dir=data["output_dir"],
        analysis_type=AnalysisType(data["analysis_type"]) if data["analysis_type"] else None,
        params=data["params"],
        progress=data["progress"],
        current_step=data["current_step"],
        error=data["error"],
        results=decode_results(data["results"]) if data["results"] is not None else None,
        attempts=data["attempts"],
        # Absent in rows written before webhooks existed.
        webhook=WebhookDelivery.from_dict(data["webhook"]) if data.get("webhook") else None,
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
    )
