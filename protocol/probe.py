"""What the server asks a long-lived probe process: one JSON line per file to check.

The probe answers each request with exactly one terminal event (`protocol.messages`): a
`Result` whose results are {"video": VideoInfo}, or an `Error` saying why the file is not
a usable video. One request at a time: the next is sent only after the answer came.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from protocol.messages import ProtocolError


@dataclass(frozen=True)
class ProbeRequest:
    """Check the video at `path` (a server path); `filename` is the client's name for it."""

    path: str
    filename: str = ""


def encode_probe_request(request: ProbeRequest) -> str:
    """One JSON line (with its newline) for the probe's stdin."""
    return json.dumps(asdict(request), separators=(",", ":")) + "\n"


def decode_probe_request(line: str | bytes) -> ProbeRequest:
    """Parse a request line; raises ProtocolError saying what is wrong."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"probe request is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("path"), str) or not data["path"]:
        raise ProtocolError("probe request needs a `path` string")
    filename = data.get("filename", "")
    if not isinstance(filename, str):
        raise ProtocolError("probe request filename must be a string")
    return ProbeRequest(data["path"], filename)
