"""`python -m inference_worker --probe-service`: check uploads one after another, long-lived.

The server keeps such a process running, so checking an upload costs one request instead
of starting Python and importing PyAV each time. It is still a process of its own: a file
that crashes or hangs it takes down only this process, which the server then replaces.

Each stdin line is a `ProbeRequest`; each is answered with exactly one terminal event on
the event channel. The end of stdin (the server closed it, or is gone) ends the process.
A request's path may be an http(s) URL (an object in a bucket): a URL that cannot be read
is answered `internal_error`, for it is no fault of the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from inference_worker.channel import EventChannel

# Imported as the process starts (PyAV takes a while), not on the first upload.
from inference_worker.video import UnusableVideo, VideoSourceUnreachable, probe, redacted
from protocol import (
    Error,
    ErrorCode,
    ProbeRequest,
    ProtocolError,
    Result,
    decode_probe_request,
)

log = logging.getLogger("inference_worker.probe_service")


def serve(channel: EventChannel, requests: Iterable[bytes]) -> None:
    """Answer every request line of `requests` until it ends."""
    for line in requests:
        if not line.strip():
            continue
        try:
            request = decode_probe_request(line)
        except ProtocolError as exc:
            channel.emit(Error(ErrorCode.INVALID_JOB.value, str(exc)))
            continue
        channel.emit(answer(request))


def answer(request: ProbeRequest) -> Result | Error:
    """The terminal event for one request: {"video": VideoInfo} or why the file is unusable.

    A URL that cannot be read (an HTTP error, a network failure) is `source_unreachable`,
    not an invalid video: the store's fault, which the server answers with a 503. An error
    nobody foresaw is answered too (and logged with its traceback): this process serves
    the next upload, so one odd file must not end it.
    """
    try:
        info = probe(request.path, request.filename, request.size)
    except UnusableVideo as exc:
        return Error(ErrorCode.INVALID_VIDEO.value, str(exc))
    except VideoSourceUnreachable as exc:
        log.warning("%s", exc)
        return Error(ErrorCode.SOURCE_UNREACHABLE.value, str(exc))
    except Exception as exc:
        # A presigned URL's query is its signature: never in a log line.
        log.exception("probe of %s failed unexpectedly", redacted(request.path))
        return Error(ErrorCode.INTERNAL_ERROR.value, f"{type(exc).__name__}: {exc}")
    return Result({"video": info.to_dict()})
