"""What the server asks a long-lived probe process: one JSON line per file to check.

The probe answers each request with exactly one terminal event (`protocol.messages`): a
`Result` whose results are {"video": VideoInfo}, or an `Error` saying why the file is not
a usable video. One request at a time: the next is sent only after the answer came.

`path` is a file the probe can open: a server path, or an http(s) URL (a presigned URL of
an object in a bucket). A URL cannot be measured without reading it, so its request says
the object's `size` in bytes; a line without `size` (every line before URLs) means None.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from protocol.messages import ProtocolError


@dataclass(frozen=True)
class ProbeRequest:
    """Check the video at `path` (a server path or an http(s) URL) of `size` bytes.

    `filename` is the client's name for it; `size` is needed for a URL, and a file's own
    size is used for a path.
    """

    path: str
    filename: str = ""
    size: int | None = None


def encode_probe_request(request: ProbeRequest) -> str:
    """One JSON line (with its newline) for the probe's stdin; no `size` key when it is None."""
    fields = {key: value for key, value in asdict(request).items() if value is not None}
    return json.dumps(fields, separators=(",", ":")) + "\n"


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
    size = data.get("size")
    # bool is an int in Python, never a size on the wire.
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ProtocolError("probe request size must be a whole number of bytes, at least 0")
    return ProbeRequest(data["path"], filename, size)
