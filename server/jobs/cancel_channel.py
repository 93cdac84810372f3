"""How a cancel reaches the runner that runs the job: the interface, and the one in-process.

A cancel is recorded in the session first (durable), then signalled. On one machine the
runner that records it is the one that runs the job, so there is nobody to tell; on a
cluster (`RedisCancelChannel`) the owning node hears it over pub/sub, and its lease keeper
reads the session at each renewal in case the signal was lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol


class CancelChannel(Protocol):
    """Cancel signals between the runners that share a queue."""

    async def start(self, stop: Callable[[str], Awaitable[None]]) -> None:
        """Begin hearing cancels recorded elsewhere: `stop(session_id)` is called for each
        (it must check the stored session: a signal alone never stops a job)."""

    async def until_gone(self, session_id: str) -> None:
        """Have the runner holding the session's job stop it; return once it says its worker
        is gone, once nobody holds the job, or after a bound."""

    async def gone(self, session_id: str) -> None:
        """Tell a cancel waiting elsewhere that this runner's worker of the session is gone."""

    async def close(self) -> None:
        """Stop hearing cancels. Safe to call twice."""


class LocalCancelChannel:
    """The `CancelChannel` of a runner alone with its queue: every job it holds is its own."""

    async def start(self, stop: Callable[[str], Awaitable[None]]) -> None:
        """Nothing to hear: no other runner records cancels for this one's jobs."""

    async def until_gone(self, session_id: str) -> None:
        """Nobody else runs jobs, so a job this runner does not hold runs nowhere."""

    async def gone(self, session_id: str) -> None:
        """Nobody else waits."""

    async def close(self) -> None:
        """Nothing was started."""

    def __repr__(self) -> str:
        return "<LocalCancelChannel>"
