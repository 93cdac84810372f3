"""The worker's side of the protocol channel, and how the process stops.

stdout carries protocol events and nothing else. Libraries print (transformers prints a
notice about PyTorch on stdout), so the channel keeps a private duplicate of the real
stdout for events and points file descriptor 1 and `sys.stdout` at stderr: any stray print
lands in the server's stderr tail instead of corrupting the event stream.

Stopping: SIGTERM raises `Terminated` in the main thread (between model steps or decoded
frames), so `finally` blocks remove half-written artifacts; a watchdog makes sure the
process is gone soon after even if the main thread is stuck in native code. A worker
started by the server also watches its stdin: end of file means the server is gone, and
the worker stops rather than keep working as an orphan.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TextIO

from protocol import Event, encode_event

# A terminated worker must be gone well under the server's SIGKILL grace (2 s); this bounds
# how long unwinding (removing temp files) may take before the process exits regardless.
UNWIND_LIMIT_SECONDS = 1.0
EXIT_TERMINATED = 128 + signal.SIGTERM


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


def install_sigterm_handler() -> None:
    """SIGTERM -> `Terminated` in the main thread, with a watchdog that exits regardless."""

    def on_sigterm(signum, frame):
        watchdog = threading.Timer(UNWIND_LIMIT_SECONDS, os._exit, args=(EXIT_TERMINATED,))
        watchdog.daemon = True
        watchdog.start()
        # Further SIGTERMs during unwinding must not interrupt the cleanup they asked for.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)


def stop_when_parent_is_gone(stdin_fd: int = 0) -> threading.Thread:
    """Watch stdin in a daemon thread; at end of file, stop this process like SIGTERM would."""

    def watch() -> None:
        # The server writes nothing after the JobSpec, so this returns only at end of file.
        while os.read(stdin_fd, 65536):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
