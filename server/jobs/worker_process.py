"""One worker child process: spawn it, hand it a JobSpec, read its events, end its group.

The child runs in its own process group (`start_new_session=True`) so that terminating it
also reaches whatever it started. Its pipes are always read: stderr by a task of its own
into a bounded tail, stdout by whoever iterates `events()`. Nothing ever waits for the
exit of a child whose pipes nobody reads, so a chatty child cannot block on a full pipe.

Starting the process and sending its JobSpec are separate steps, so a process can be
started ahead of time (with the model loaded) and be given its job later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncGenerator, Mapping, Sequence

from protocol import Event, InvalidLine, JobSpec, decode_event, encode_job

log = logging.getLogger(__name__)

# A results line carries every highlight of a long video; lines of several MB are normal.
STREAM_LIMIT = 32 * 1024 * 1024
# The end of a traceback fits in this; a failure message needs no more.
STDERR_TAIL_BYTES = 4096
# A worker unwinds (removes half-written files) and exits within this after SIGTERM.
TERMINATE_GRACE_SECONDS = 2.0
# SIGKILL cannot be refused; this only bounds a process stuck in the kernel (e.g. a dead NFS).
KILL_REAP_SECONDS = 5.0
# Children die on the group's SIGKILL at once; zombies nobody reaps would hold the group forever.
GROUP_EXIT_SECONDS = 1.0
# Children a worker leaves behind get this long to end by themselves once it has exited.
ORPHAN_GRACE_SECONDS = 1.0
# asyncio gives no public callback for a child's exit before its pipes close; polling
# `returncode` is portable and this costs nothing next to a model run.
EXIT_POLL_SECONDS = 0.1
# How often the end of a process group is checked while waiting for it.
GROUP_POLL_SECONDS = 0.02
# Garbage lines are echoed in logs up to this many bytes.
ECHO_BYTES = 200


class WorkerProcess:
    """A child process speaking the protocol: JobSpec on stdin, JSON-lines events on stdout.

    Always end with `terminate()`, which is idempotent and returns only once the process
    is gone; it is the only thing that closes the child's stdin (a worker treats the end
    of its stdin as "the server is gone").
    """

    def __init__(self, *, label: str = "worker", limit: int = STREAM_LIMIT) -> None:
        self.label = label
        self.limit = limit
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_tail = bytearray()
        self._stderr_reader: asyncio.Task[None] | None = None
        self._orphan_sweeper: asyncio.Task[None] | None = None
        self._terminating: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id) once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended; negative for a signal, as in asyncio."""
        return self._proc.returncode if self._proc is not None else None

    @property
    def stderr_tail(self) -> str:
        """The last few KB the process wrote on stderr."""
        return self._stderr_tail.decode("utf-8", "replace")

    async def start(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Spawn the process in its own process group, with all three pipes.

        `env` is the child's whole environment (None: the server's own).
        """
        if self._proc is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            limit=self.limit,
            start_new_session=True,
        )
        self._stderr_reader = asyncio.create_task(
            self._read_stderr(), name=f"{self.label} {self.pid} stderr"
        )
        self._orphan_sweeper = asyncio.create_task(
            self._sweep_orphans(), name=f"{self.label} {self.pid} orphans"
        )

    async def send(self, spec: JobSpec) -> None:
        """Write the JobSpec line to stdin and wait until it is handed over; stdin stays open."""
        await self.send_line(encode_job(spec))

    async def send_line(self, line: str) -> None:
        """Write one request line (with its newline) to stdin and wait until it is handed over."""
        proc = self._started()
        assert proc.stdin is not None
        try:
            proc.stdin.write(line.encode("utf-8"))
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            # The child died before reading its line; its stdout ends without a terminal
            # event and `describe_exit()` says why, so there is nothing to add here.
            log.debug("%r: stdin closed before its line was written", self)

    async def events(self) -> AsyncGenerator[Event | InvalidLine, None]:
        """Decode stdout line by line until it ends.

        Never raises for bad output: a line that is not an event, or one longer than the
        stream limit, becomes an `InvalidLine` and reading goes on. Blank lines are skipped.
        """
        stdout = self._started().stdout
        assert stdout is not None
        oversized: bytes | None = None  # the head of a line being skipped for its length
        while True:
            try:
                line = await stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                line = end.partial  # stdout ended; this is its last, unterminated line
                if oversized is not None:
                    yield self._too_long(oversized)
                elif line.strip():
                    yield decode_event(line)
                return
            except asyncio.LimitOverrunError as overrun:
                # The bytes stay buffered; drop them and keep skipping to the line's end.
                dropped = await stdout.readexactly(overrun.consumed)
                if oversized is None:
                    oversized = dropped[:ECHO_BYTES]
                continue
            if oversized is not None:
                yield self._too_long(oversized)
                oversized = None
            elif line.strip():
                yield decode_event(line)

    async def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for the process to end by itself; its returncode or None.

        When it has ended, its stderr has been read to the end, so `describe_exit()` is
        complete. Call it once stdout has ended (or is no longer needed): the stream buffers
        what nobody reads, so the child cannot block on it.
        """
        await self._ended(timeout)
        return self.returncode

    async def terminate(self) -> None:
        """Stop the process and its group; return once the process is gone.

        Closes stdin, sends SIGTERM to the group, waits `TERMINATE_GRACE_SECONDS`, then
        SIGKILL to the group and waits `KILL_REAP_SECONDS`; finally kills any child left
        in the group. Idempotent, safe when the process already exited or never started,
        and concurrent callers share one termination. A cancelled caller leaves the
        termination running; calling again waits for it.
        """
        if self._proc is None:
            return
        if self._terminating is None:
            self._terminating = asyncio.create_task(
                self._terminate(self._proc), name=f"{self.label} {self.pid} terminate"
            )
        await asyncio.shield(self._terminating)

    def exit_reason(self) -> str:
        """How the process ended, in words: "worker exited with code 3" and the like."""
        code = self.returncode
        if self._proc is None:
            return f"{self.label} was never started"
        if code is None:
            return f"{self.label} is still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"{self.label} was killed by signal {name}"
        return f"{self.label} exited with code {code}"

    def describe_exit(self, tail_lines: int | None = None) -> str:
        """`exit_reason()` plus the stderr tail (only its last `tail_lines` lines if given)."""
        lines = [line for line in self.stderr_tail.splitlines() if line.strip()]
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        if not lines:
            return self.exit_reason()
        return f"{self.exit_reason()}: " + "\n".join(lines)

    def _started(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError(f"{self!r} was not started")
        return self._proc

    def _too_long(self, head: bytes) -> InvalidLine:
        echo = head.decode("utf-8", "replace")
        return InvalidLine(echo, f"line longer than the {self.limit} byte limit")

    async def _read_stderr(self) -> None:
        stderr = self._started().stderr
        assert stderr is not None
        while chunk := await stderr.read(65536):
            self._stderr_tail += chunk
            del self._stderr_tail[:-STDERR_TAIL_BYTES]

    async def _sweep_orphans(self) -> None:
        """Once the leader has exited, kill whatever is left of its process group.

        A job's processes must not outlive it; and a leftover child holding stdout open
        would keep the end of stdout, which is how a crash is noticed, from ever coming.
        """
        proc = self._started()
        while proc.returncode is None:  # noqa: ASYNC110 - no event to wait on (EXIT_POLL_SECONDS)
            await asyncio.sleep(EXIT_POLL_SECONDS)
        await asyncio.sleep(ORPHAN_GRACE_SECONDS)
        if self._signal_group(proc.pid, signal.SIGKILL):
            log.info("%r: killed what was left of its process group", self)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None
        proc.stdin.close()
        if proc.returncode is None:
            self._signal_group(proc.pid, signal.SIGTERM)
            if not await self._ended(TERMINATE_GRACE_SECONDS):
                self._signal_group(proc.pid, signal.SIGKILL)
                if not await self._ended(KILL_REAP_SECONDS):
                    log.error("%r did not go away after SIGKILL", self)
        # Children that ignored SIGTERM, or outlived a leader that exited by itself.
        if self._signal_group(proc.pid, signal.SIGKILL):
            await self._group_gone(proc.pid)
        # Normally already true; lets the stderr reader take in the last of the tail.
        await self._ended(ORPHAN_GRACE_SECONDS)
        helpers = [task for task in (self._stderr_reader, self._orphan_sweeper) if task]
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)

    async def _ended(self, timeout: float) -> bool:
        """True once, within `timeout`, the process is gone and its stderr read to the end."""
        proc = self._started()

        async def ended() -> None:
            await proc.wait()
            if self._stderr_reader is not None:
                # asyncio.wait: neither cancels the reader nor raises if it was cancelled.
                await asyncio.wait({self._stderr_reader})

        try:
            await asyncio.wait_for(ended(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> bool:
        """Signal every process of the group; False if the group no longer exists."""
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            # Only a member that changed its credentials; the others were signalled.
            log.warning("not allowed to signal every process of group %d", pgid)
        return True

    @staticmethod
    async def _group_gone(pgid: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GROUP_EXIT_SECONDS
        while loop.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            await asyncio.sleep(GROUP_POLL_SECONDS)

    def __repr__(self) -> str:
        if self._proc is None:
            state = "not started"
        elif self.returncode is None:
            state = "running"
        else:
            state = f"returncode={self.returncode}"
        return f"<WorkerProcess {self.label} pid={self.pid} {state}>"
