"""Vet uploads out of the server's process: hostile media may crash or hang a demuxer, not us.

A few long-lived probe processes (`python -m inference_worker --probe-service`) each take
one request at a time: a `ProbeRequest` line in, one terminal event out, a `result` whose
results are {"video": VideoInfo} or an `error` saying why the file is not a usable video.
Keeping them running spares every upload a Python start and the PyAV import.

A process that crashes, answers garbage or runs out of time on a file is killed, the file
is refused as `InvalidVideo` (it is the file's fault), and a fresh process is started in
its place at once; the server and the other uploads carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path

from protocol import (
    Error,
    ErrorCode,
    Event,
    InvalidLine,
    ProbeRequest,
    Result,
    VideoInfo,
    encode_probe_request,
)
from server.jobs.worker_process import WorkerProcess
from server.state.models import InvalidVideo, RunnerClosed
from server.storage.files import StorageUnavailable

log = logging.getLogger(__name__)

# Two, so that one file hanging a probe for its whole timeout does not hold up every other
# upload; each idle process costs only an interpreter with PyAV imported.
PROBE_PROCESSES = 2
# A probe's stdout ended: this lets its exit status and stderr arrive for the log line.
PROBE_EXIT_GRACE = 2.0
PROBE_FAILED = "Could not read the video"


class ProbeService:
    """`processes` probe processes; `probe` hands each file to an idle one.

    `command` starts one probe process and `timeout` bounds its answer to one file (the
    defaults of both are settings: `Config.probe_command`, `Config.probe_timeout_seconds`).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        timeout: float,
        processes: int = PROBE_PROCESSES,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self._probers = [_Prober(tuple(command), env, timeout) for _ in range(processes)]
        self._idle: asyncio.Queue[_Prober] = asyncio.Queue()
        for prober in self._probers:
            self._idle.put_nowait(prober)

    async def start(self) -> None:
        """Start every probe process; one that cannot start is tried again by its next file."""
        for prober in self._probers:
            prober.launch()
        await asyncio.gather(*(prober.started() for prober in self._probers))

    async def probe(self, path: str | Path, filename: str, size: int | None = None) -> VideoInfo:
        """What a probe process finds in the video at `path`; `filename` is the client's name.

        `path` is a server path, or an http(s) URL (a presigned URL of an object in a bucket)
        whose object is `size` bytes long: a URL needs its size, a path's is measured.
        Raises InvalidVideo with the probe's message for an `error` answer, and with a
        generic message when the probe crashes, answers garbage or runs out of time (the
        process is then replaced). Failing to start a probe process at all (a broken
        installation) is an OSError, not the video's fault.
        """
        prober = await self._idle.get()
        try:
            return await prober.probe(ProbeRequest(str(path), filename, size))
        finally:
            self._idle.put_nowait(prober)

    @property
    def pids(self) -> list[int]:
        """The process ids of the live probe processes."""
        return [pid for prober in self._probers if (pid := prober.pid) is not None]

    async def close(self) -> None:
        """End every probe process; return once they are gone."""
        await asyncio.gather(*(prober.close() for prober in self._probers))

    def __repr__(self) -> str:
        return f"<ProbeService pids={self.pids} idle={self._idle.qsize()}/{len(self._probers)}>"


class _Prober:
    """One probe process at a time, replaced whenever it fails on a file.

    Used by one caller at a time (the service's idle queue sees to it), so a request's
    answer is always the next event on stdout.
    """

    def __init__(
        self, command: tuple[str, ...], env: Mapping[str, str] | None, timeout: float
    ) -> None:
        self._command = command
        self._env = env
        self._timeout = timeout
        self._worker: WorkerProcess | None = None
        self._events: AsyncGenerator[Event | InvalidLine, None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pid(self) -> int | None:
        worker = self._worker
        return worker.pid if worker is not None and worker.returncode is None else None

    def launch(self) -> None:
        """Start a process in the background (the next request waits for it)."""
        self._starting = asyncio.create_task(self._start(), name="start probe")

    async def started(self) -> None:
        """Wait for the launch under way; a failure is logged, and retried on the next file."""
        try:
            await self._ready()
        except OSError:
            log.exception("could not start a probe process; the next upload tries again")

    async def probe(self, request: ProbeRequest) -> VideoInfo:
        worker, events = await self._ready()
        try:
            answer = await asyncio.wait_for(self._ask(worker, events, request), self._timeout)
        except asyncio.TimeoutError:
            self._replace(f"gave no answer within {self._timeout:g} s")
            raise InvalidVideo(f"{PROBE_FAILED}: it took longer than {self._timeout:g} s") from None
        except BaseException:
            # Cancelled mid-request (the client left): its answer would be read as the
            # next file's, so this process goes.
            self._replace("was interrupted mid-request")
            raise
        if isinstance(answer, InvalidLine):
            self._replace(f"printed a line that is not an event ({answer.reason})")
            raise InvalidVideo(PROBE_FAILED)
        if answer is None:
            await worker.wait(PROBE_EXIT_GRACE)
            self._replace(f"ended on a file: {worker.describe_exit()}")
            raise InvalidVideo(PROBE_FAILED)
        if isinstance(answer, Error):
            if answer.error == ErrorCode.INVALID_VIDEO.value:
                raise InvalidVideo(answer.message)
            if answer.error == ErrorCode.SOURCE_UNREACHABLE.value:
                # The file store failed the probe's reads: a 503, not the client's file.
                log.warning("%r could not read the upload: %s", worker, answer.message)
                raise StorageUnavailable("the probe could not read the upload from the store")
            log.warning("%r could not probe a file: %s: %s", worker, answer.error, answer.message)
            raise InvalidVideo(PROBE_FAILED)
        try:
            return VideoInfo.from_dict(answer.results["video"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%r answered an unusable result (%s)", worker, exc)
            raise InvalidVideo(PROBE_FAILED) from None

    async def close(self) -> None:
        self._closed = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        if self._worker is not None:
            self._replace(None)
        await asyncio.gather(*self._ending)

    async def _ready(self) -> tuple[WorkerProcess, AsyncGenerator[Event | InvalidLine, None]]:
        """The live process and its events, started (again) if there is none."""
        if self._closed:
            raise RunnerClosed()
        if self._worker is not None and self._worker.returncode is not None:
            # Died between files: not the next file's fault, so it just gets a new one.
            log.warning("probe process died while idle: %s", self._worker.describe_exit())
            self._replace(None)
        if self._worker is None and self._starting is None:
            self.launch()
        if self._starting is not None:
            try:
                # Shielded: a caller cancelled meanwhile must not leave half a process.
                await asyncio.shield(self._starting)
            finally:
                if self._starting.done():
                    self._starting = None
        assert self._worker is not None and self._events is not None
        return self._worker, self._events

    async def _start(self) -> None:
        worker = WorkerProcess(label="probe")
        await worker.start(self._command, self._env)
        self._worker, self._events = worker, worker.events()

    async def _ask(
        self,
        worker: WorkerProcess,
        events: AsyncGenerator[Event | InvalidLine, None],
        request: ProbeRequest,
    ) -> Result | Error | InvalidLine | None:
        """Send one request; its terminal event, a garbage line, or None if stdout ended."""
        await worker.send_line(encode_probe_request(request))
        async for event in events:
            if isinstance(event, (Result, Error, InvalidLine)):
                return event
        return None

    def _replace(self, reason: str | None) -> None:
        """End the current process in the background; with a `reason`, start another now.

        `reason` is why the process had to go, for the log. Without one (closing, or a
        process found dead) nothing is started: closing wants none, `_ready` starts its own.
        """
        worker, events = self._worker, self._events
        self._worker = self._events = None
        if worker is not None and events is not None:
            if reason is not None:
                log.warning("%r %s; starting a new one", worker, reason)
            task = asyncio.create_task(_end(worker, events), name=f"end probe {worker.pid}")
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
        if reason is not None and not self._closed:
            self.launch()


async def _end(worker: WorkerProcess, events: AsyncGenerator[Event | InvalidLine, None]) -> None:
    await events.aclose()
    await worker.terminate()
