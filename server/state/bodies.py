"""The wire bodies the session state builds: the status body and the `partial` event data.

They live here, not with the other bodies in `server/web/bodies.py`, because the state
layer builds them (every status change publishes a status body to the event hub) and
state may not import web. `server/web/bodies.py` re-exports them and lists them with the
rest, so the OpenAPI document's schemas are generated from these declarations too.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from protocol import PARTIAL_ITEMS, AnalysisType, PartialKind
from server.state.models import Session, SessionStatus, iso_utc
from server.state.webhook_delivery import DeliveryState, WebhookDelivery

# Where the OpenAPI document keeps the schema of each declared class (`component_schemas`).
SCHEMA_REF = "#/components/schemas/{name}"

# Timestamps are made by `iso_utc` (second precision, `Z`), so they stay strings here.
Timestamp = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


class WebhookStatus(msgspec.Struct, rename="camel", frozen=True):
    """Where the session's end is POSTed, and how far that delivery got (API.md, Webhooks)."""

    url: str
    state: DeliveryState
    attempts: Annotated[int, msgspec.Meta(ge=0)]
    last_status: (
        Annotated[int, msgspec.Meta(description="the receiver's HTTP status of the last attempt")]
        | None
    )
    last_error: (
        Annotated[str, msgspec.Meta(description="why the last attempt did not count as delivered")]
        | None
    )
    delivered_at: Timestamp | None


class StatusBody(msgspec.Struct, rename="camel", frozen=True):
    """The status of a session (API.md §2); also the `data` of every status and terminal event."""

    session_id: str
    status: SessionStatus
    progress: Annotated[float, msgspec.Meta(ge=0, le=1)]
    current_step: str | None
    analysis_type: AnalysisType | None
    created_at: Timestamp
    updated_at: Timestamp
    error: str | None
    queue_position: Annotated[int, msgspec.Meta(ge=1)] | None
    # Null unless the upload or analyze gave a `webhook_url`.
    webhook: WebhookStatus | None = None


_PARTIAL_ITEM_SCHEMA = {
    "anyOf": [{"$ref": SCHEMA_REF.format(name=cls.__name__)} for cls in PARTIAL_ITEMS.values()]
}


class PartialData(msgspec.Struct, rename="camel", frozen=True):
    """The `data` of a `partial` event: one result found so far, in the results' own shape.

    `kind` names the results list the item belongs to: `timeline` (a judged segment, sent
    as soon as it is judged), `highlights` (a highlight, without thumbnail) or `segments`
    (a workout segment).
    """

    session_id: str
    kind: PartialKind
    # A PartialItem (`PARTIAL_ITEMS[kind]`). msgspec takes no union of untagged Structs
    # as a field type, so the schema names the three here; those classes are declared
    # bodies (server/web/bodies.py), so their schemas are in the document.
    item: Annotated[
        Any,
        msgspec.Meta(
            description="a timeline entry, a highlight (without thumbnail) or a workout segment",
            extra_json_schema=_PARTIAL_ITEM_SCHEMA,
        ),
    ]

    def __post_init__(self) -> None:
        # Read back from JSON the item is plain data: make it its list's type, which checks it.
        wanted = PARTIAL_ITEMS[self.kind]
        if not isinstance(self.item, wanted):
            msgspec.structs.force_setattr(self, "item", msgspec.convert(self.item, wanted))


def status_body(session: Session, queue_position: int | None = None) -> StatusBody:
    """The status body of `session`; `queue_position` counts only while it is pending."""
    completed = session.status is SessionStatus.COMPLETED
    return StatusBody(
        session_id=session.id,
        status=session.status,
        progress=1.0 if completed else session.progress,
        current_step=session.current_step,
        analysis_type=session.analysis_type,
        created_at=iso_utc(session.created_at),
        updated_at=iso_utc(session.updated_at),
        error=session.error,
        queue_position=queue_position if session.status is SessionStatus.PENDING else None,
        webhook=webhook_status(session.webhook) if session.webhook else None,
    )


def webhook_status(delivery: WebhookDelivery) -> WebhookStatus:
    """The status body's `webhook`: where the session's end goes and how far it got."""
    return WebhookStatus(
        url=delivery.url,
        state=delivery.state,
        attempts=delivery.attempts,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        delivered_at=iso_utc(delivery.delivered_at) if delivery.delivered_at else None,
    )
