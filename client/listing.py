"""What the client prints for a person rather than a program: the sessions table and the
one-line account of a webhook's delivery."""

from __future__ import annotations

from datetime import datetime
from typing import Any

COLUMNS = ("ID", "ANALYSIS", "STATUS", "CREATED", "PROGRESS")
# Separates columns; wide enough to read, narrow enough for an 80-column terminal.
GAP = "  "


def sessions_table(sessions: list[dict[str, Any]], status: str | None = None) -> str:
    """Status bodies as aligned columns, one session a row, the creation time local."""
    if not sessions:
        return f"No {status} sessions." if status else "No sessions."
    rows = [
        (
            body.get("sessionId", ""),
            body.get("analysisType") or "-",
            body.get("status", ""),
            local_time(body.get("createdAt")),
            percent(body.get("progress")),
        )
        for body in sessions
    ]
    widths = [max(len(row[column]) for row in [COLUMNS, *rows]) for column in range(len(COLUMNS))]
    lines = []
    for row in [COLUMNS, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append(GAP.join([*cells, row[-1].rjust(widths[-1])]))
    return "\n".join(lines)


def local_time(stamp: str | None) -> str:
    """The API's UTC ISO-8601 time in this machine's time zone, to the minute."""
    if not stamp:
        return "-"
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp  # not ours to judge: show what the server said
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def percent(progress: Any) -> str:
    try:
        return f"{int(min(max(float(progress), 0.0), 1.0) * 100)}%"
    except (TypeError, ValueError):
        return "-"


def webhook_line(webhook: dict[str, Any]) -> str:
    """The delivery of the status body's `webhook` in one sentence."""
    url, state = webhook.get("url", "?"), webhook.get("state")
    attempts = int(webhook.get("attempts") or 0)
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    last = webhook.get("lastError") or (
        f"HTTP {webhook['lastStatus']}" if webhook.get("lastStatus") is not None else None
    )
    if state == "delivered":
        answer = f"HTTP {webhook['lastStatus']}, " if webhook.get("lastStatus") else ""
        return f"Webhook delivered to {url} ({answer}{tries})."
    if state == "failed":
        return f"Webhook to {url} failed after {tries}: {last or 'no reason given'}."
    if state == "pending" and attempts:
        return f"Webhook to {url} not delivered yet ({tries}, last: {last}); the server retries."
    if state == "pending":
        return f"Webhook to {url} is being delivered."
    return f"Webhook to {url}: {state}."
