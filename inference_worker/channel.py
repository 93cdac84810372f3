"""The worker's side of the protocol channel, and how the process stops.

stdout carries protocol events and nothing else. Libraries print (transformers prints a
notice about PyTorch on stdout), so the channel keeps a private duplicate of the real
stdout for events and points file descriptor 1 and `sys.stdout` at stderr: any stray print
lands in the server's stderr tail instead of corrupting the event stream.

Stopping: SIGTERM raises `Terminated` in the main thread (between model steps or decoded
frames), so `finally` blocks remove half-written artifacts. Python runs that handler only
once the main thread is back in the interpreter, which a long native call (an MLX
evaluation of tens of seconds, a model load) delays until it returns. So the signal is
also caught at the C level: `signal.set_wakeup_fd` writes its number to a pipe that a
watchdog thread reads, and unless the main thread has unwound by `UNWIND_LIMIT_SECONDS`,
the watchdog removes the artifacts still being written and ends the process itself.
A worker started by the server also watches its stdin: end of file means the server is
gone, and the worker stops rather than keep working as an orphan, even while it is still
loading the model before its job has arrived.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from protocol import Event, encode_event

# A terminated worker must be gone within a second, well under the server's SIGKILL grace
# (2 s); this bounds how long unwinding (removing temp files, milliseconds when the main
# thread is in Python) may take before the watchdog ends the process regardless.
UNWIND_LIMIT_SECONDS = 0.5
EXIT_TERMINATED = 128 + signal.SIGTERM

# Files being written right now, removed by the watchdog if it has to end the process.
_unfinished: set[Path] = set()


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM. A BaseException so `except Exception` won't eat it."""


class EventChannel:
    """Writes protocol events, one JSON line each, to the real stdout."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @classmethod
    def claim_stdout(cls) -> EventChannel:
        """Take the real stdout for events; from now on fd 1 and sys.stdout go to stderr."""
        sys.stdout.flush()
        events_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(os.fdopen(events_fd, "w", encoding="utf-8", buffering=1))

    def emit(self, event: Event) -> None:
        line = encode_event(event)
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


def install_sigterm_handler() -> threading.Thread:
    """SIGTERM -> `Terminated` in the main thread, and a watchdog that exits regardless.

    Call from the main thread. Returns the watchdog thread (a daemon).
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # the C handler must never block on a full pipe
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
        # Further SIGTERMs during unwinding must not interrupt the cleanup they asked for.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    watchdog = threading.Thread(
        target=_watch_for_sigterm, args=(read_fd,), name="sigterm-watchdog", daemon=True
    )
    watchdog.start()
    return watchdog


def _watch_for_sigterm(read_fd: int) -> None:
    """Wait for SIGTERM's byte on the wakeup pipe; then give the main thread a moment."""
    while signal.SIGTERM not in os.read(read_fd, 64):
        pass  # another signal with a Python handler (SIGINT): not ours to act on
    threading.Event().wait(UNWIND_LIMIT_SECONDS)
    # Still here: the main thread did not unwind in time (stuck in a native call).
    for path in list(_unfinished):
        path.unlink(missing_ok=True)
    os._exit(EXIT_TERMINATED)


@contextmanager
def removed_if_killed(path: Path) -> Iterator[Path]:
    """While the block runs, `path` is removed if the watchdog has to end the process."""
    _unfinished.add(path)
    try:
        yield path
    finally:
        _unfinished.discard(path)


class JobInbox:
    """Reads the JobSpec line from stdin in a thread, and watches stdin for its end.

    End of file means the server is gone. Before the line has come, the process is
    stopped like SIGTERM would stop it while it is busy (`busy_first`: a warm worker
    loading its model stops at once); once the main thread waits in `job_line`, it gets
    b"" instead: nothing to do. Once the job is accepted (`stop_when_closed`), end of file
    stops it too; a line that is not a usable job is answered with an error instead.
    """

    def __init__(self, busy_first: bool, stdin_fd: int = 0) -> None:
        self._stdin_fd = stdin_fd
        self._line = b""
        self._arrived = threading.Event()
        self._accepted = threading.Event()
        self._lock = threading.Lock()
        self._waiting = not busy_first
        self._thread = threading.Thread(target=self._read, name="parent-watch", daemon=True)
        self._thread.start()

    def job_line(self) -> bytes:
        """The JobSpec line (with its newline), or b"" if stdin ended before one came."""
        with self._lock:
            self._waiting = True
        self._arrived.wait()
        return self._line

    def stop_when_closed(self) -> None:
        """The job was accepted: from now on (or already), end of stdin stops the process."""
        self._accepted.set()

    def _read(self) -> None:
        with open(self._stdin_fd, "rb", closefd=False) as stdin:
            self._line = stdin.readline()
            with self._lock:
                nothing_to_do = self._waiting and not self._line
                self._arrived.set()
            if nothing_to_do:
                return
            if self._line:
                self._accepted.wait()
                # The server writes nothing after the JobSpec: this returns at end of file.
                while stdin.read1(65536):
                    pass
        os.kill(os.getpid(), signal.SIGTERM)
