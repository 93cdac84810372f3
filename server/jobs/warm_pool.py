"""Warm workers: processes started ahead of jobs, each already holding the model.

Starting a worker means starting Python, importing mlx_vlm and loading the model: seconds
that every job would otherwise wait before its first real progress. A warm worker has
done all that and waits for its JobSpec on stdin. It still takes exactly one job and then
exits, so cancelling a job kills its process and frees its memory as before; a fresh
worker is started behind each one taken.

A warm worker says whether its model loaded (a `ModelReport` line, before any job), so
the pool is the first to know, and tells `ModelHealth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from protocol import ModelReport
from server.jobs.model_health import ModelHealth
from server.jobs.worker_process import WorkerProcess

log = logging.getLogger("server.jobs.warm_pool")


class WarmPool:
    """Keeps `size` idle workers started with `--model MODEL`; `take` hands one out."""

    def __init__(
        self,
        size: int,
        command: Sequence[str],
        model: str,
        env: Mapping[str, str] | None,
        health: ModelHealth,
    ) -> None:
        self._size = size
        self._health = health
        # The worker loads the model named by --model before it reads its JobSpec.
        self._command = (*command, "--model", model)
        self._env = env
        self._idle: list[WorkerProcess] = []
        # Per idle worker, the task reading its model report; stopped when it is taken,
        # since from then on the job's supervisor reads its stdout.
        self._listeners: dict[WorkerProcess, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def fill(self) -> None:
        """Start workers until `size` of them are idle or starting."""
        starting = sum(1 for task in self._tasks if task.get_name() == "start warm worker")
        for _ in range(self._size - len(self._idle) - starting):
            self._spawn(self._start_one(), "start warm worker")

    def take(self) -> WorkerProcess | None:
        """An idle worker that is still alive (oldest first: the most likely to be ready).

        Synchronous on purpose: a caller cancelled while waiting could otherwise lose
        the worker it was handed. Dead idle workers are reaped in the background.
        """
        while self._idle:
            worker = self._idle.pop(0)
            listener = self._listeners.pop(worker, None)
            if listener is not None:
                listener.cancel()
            if worker.returncode is None:
                self.fill()
                return worker
            log.warning("warm worker died while idle: %s", worker.describe_exit())
            self._spawn(worker.terminate(), "reap warm worker")
        self.fill()
        return None

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        """Stop starting workers and end the idle ones; return once they are gone."""
        self._closed = True
        for task in list(self._tasks):
            if task.get_name() == "start warm worker":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        listeners = list(self._listeners.values())
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        idle, self._idle = self._idle, []
        await asyncio.gather(*(worker.terminate() for worker in idle))

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        worker = WorkerProcess(label="warm worker")
        try:
            await worker.start(self._command, self._env)
        except OSError:
            log.exception("could not start a warm worker; jobs will start their own")
            return
        except asyncio.CancelledError:
            await worker.terminate()
            raise
        if self._closed:
            await worker.terminate()
            return
        self._idle.append(worker)
        listener = asyncio.create_task(self._listen(worker), name="warm worker model report")
        self._listeners[worker] = listener
        listener.add_done_callback(lambda _: self._listeners.pop(worker, None))

    async def _listen(self, worker: WorkerProcess) -> None:
        """Pass on the model report an idle worker sends once its model is loaded (or not)."""
        async with contextlib.aclosing(worker.events()) as events:
            async for event in events:
                if isinstance(event, ModelReport):
                    self._health.report(event.state, event.reason)
                return

    def __repr__(self) -> str:
        return f"<WarmPool idle={len(self._idle)}/{self._size}>"
