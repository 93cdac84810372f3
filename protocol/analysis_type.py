"""The analyses a worker can run: the one name every other module of `protocol` builds on."""

from __future__ import annotations

from enum import Enum


class AnalysisType(str, Enum):
    """The analyses a worker can run; the values are the wire strings."""

    HIGHLIGHTS = "highlights"
    WORKOUT = "workout"
