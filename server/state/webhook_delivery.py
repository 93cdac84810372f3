"""Where a session's end is announced, and how far that announcement got: data only.

A delivery is kept inside the session's snapshot, so the store that persists the session
persists the delivery too, in the same write: a session stored as ended with its
delivery `pending` is delivered by whichever server process opens that store next.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


class DeliveryState(str, Enum):
    """The values are the wire strings of the status body's `webhook.state`."""

    WAITING = "waiting"  # the session has not ended yet
    PENDING = "pending"  # the session ended; being delivered, or waiting for a retry
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # no 2xx within the retry window: given up


@dataclass(frozen=True)
class WebhookDelivery:
    """The webhook of one session: its URL and the outcome of the attempts so far."""

    url: str
    state: DeliveryState = DeliveryState.WAITING
    attempts: int = 0
    last_status: int | None = None  # the receiver's HTTP status of the last attempt
    last_error: str | None = None  # why the last attempt did not count as delivered
    pending_since: datetime | None = None  # when the session ended (the retry window starts)
    delivered_at: datetime | None = None

    def replace(self, **changes: Any) -> WebhookDelivery:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """For the store: every field, timestamps ISO-8601 with their offset."""
        return {
            "url": self.url,
            "state": self.state.value,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "pending_since": _iso(self.pending_since),
            "delivered_at": _iso(self.delivered_at),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WebhookDelivery:
        """Rebuild from `to_dict` output; raises KeyError/TypeError/ValueError if malformed."""
        return cls(
            url=str(data["url"]),
            state=DeliveryState(data["state"]),
            attempts=int(data["attempts"]),
            last_status=data["last_status"],
            last_error=data["last_error"],
            pending_since=_from_iso(data["pending_since"]),
            delivered_at=_from_iso(data["delivered_at"]),
        )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _from_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None
