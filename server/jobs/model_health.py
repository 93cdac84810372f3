"""What the server knows of its model: can the workers load it?

The warm worker knows first: it loads the model as it starts and reports `ready` or
`unavailable` (with why) before taking a job. Jobs report too: a result means the model
loaded, a `model_unavailable` error means it did not. Without warm workers nothing is
known until the first job has run, and the state says so (`unknown`).
"""

from __future__ import annotations

import logging
from typing import Final, Literal

from protocol import ModelState, model_display_name

log = logging.getLogger("server.jobs.model_health")

# Only without warm workers, until a job has shown whether the model loads.
UNKNOWN: Final = "unknown"
# The model's state as /health names it: a worker's ModelState, or UNKNOWN.
ModelStateName = Literal["loading", "ready", "unavailable", "unknown"]


class ModelHealth:
    """The latest known state of the model and, when unavailable, the reason.

    Each change of state (or of the reason) is logged once, so a model that cannot be
    loaded is named in the log at start, not once per warm worker or job.
    """

    def __init__(self, model: str, *, warm: bool) -> None:
        """`warm`: warm workers are loading the model now; else nothing is known yet."""
        self._model = model
        self.state: ModelStateName = ModelState.LOADING.value if warm else UNKNOWN
        self.reason: str | None = None

    @property
    def unavailable(self) -> bool:
        return self.state == ModelState.UNAVAILABLE.value

    def report(self, state: ModelState, reason: str = "") -> None:
        """Record what a worker found: `ready`, or `unavailable` and why."""
        why = (reason or "no reason given") if state is ModelState.UNAVAILABLE else None
        if (state.value, why) == (self.state, self.reason):
            return
        self.state, self.reason = state.value, why
        name = model_display_name(self._model)
        if state is ModelState.UNAVAILABLE:
            log.error("model %s is unavailable, so every job will fail: %s", name, why)
        else:
            log.info("model %s is %s", name, state.value)

    def __repr__(self) -> str:
        return f"<ModelHealth {self.state}{f': {self.reason}' if self.reason else ''}>"
