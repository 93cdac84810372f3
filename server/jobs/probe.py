"""Vet an upload in a child process: hostile media may crash or hang a demuxer, not the server.

The child is the worker in probe mode. It prints one terminal event: a `result` whose
results are {"video": VideoInfo} or an `error` saying why the file is not a usable video.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol import Error, InvalidLine, Result, VideoInfo
from server.jobs.worker_process import WorkerProcess
from server.state.models import InvalidVideo

log = logging.getLogger(__name__)

# Reading a container's headers and one frame takes well under a second; a file that
# holds the demuxer longer than this is hostile or broken.
PROBE_TIMEOUT = 30.0
# A probe exits right after its answer; this only lets it flush stderr before we kill it.
PROBE_EXIT_GRACE = 2.0
UNREADABLE = "Could not read the video"


async def probe_video(
    path: str | Path,
    filename: str,
    *,
    command_prefix: Sequence[str] = (sys.executable, "-m", "inference_worker"),
    timeout: float = PROBE_TIMEOUT,
) -> VideoInfo:
    """What the probe child finds in the video at `path`; `filename` is the client's name.

    Raises InvalidVideo with the child's message for an `error` answer, and with a
    generic message when the child crashes, answers garbage or runs out of `timeout`.
    Nothing is left running when this returns or raises. Failing to start the child at
    all (a broken installation) is an OSError, not the video's fault.
    """
    probe = WorkerProcess(label="probe")
    try:
        await probe.start([*command_prefix, "--probe", str(path), "--filename", filename])
        try:
            answer = await asyncio.wait_for(_answer(probe), timeout)
        except asyncio.TimeoutError:
            log.warning("%r gave no answer within %g s", probe, timeout)
            raise InvalidVideo(f"{UNREADABLE}: it took longer than {timeout:g} s") from None
        await probe.wait(PROBE_EXIT_GRACE)
    finally:
        await probe.terminate()
    if isinstance(answer, Error):
        raise InvalidVideo(answer.message)
    if isinstance(answer, Result):
        try:
            return VideoInfo.from_dict(answer.results["video"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%r answered an unusable result (%s)", probe, exc)
            raise InvalidVideo(UNREADABLE) from None
    log.warning("%r gave no answer: %s", probe, probe.describe_exit())
    raise InvalidVideo(UNREADABLE)


async def _answer(probe: WorkerProcess) -> Result | Error | None:
    """The probe's terminal event, or None if its stdout ends without one."""
    async with contextlib.aclosing(probe.events()) as events:
        async for event in events:
            if isinstance(event, InvalidLine):
                log.warning("%r printed a line that is not an event (%s)", probe, event.reason)
            elif isinstance(event, (Result, Error)):
                return event
    return None
