"""Analysis parameters: one schema, checked the same way by the server and the worker.

`validate_params` returns a complete dict (defaults filled in) or raises `ParamsError` with
a message a client can act on: which key, what it must be, and which keys are allowed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from protocol.analysis_type import AnalysisType


class ParamsError(ValueError):
    """Parameters a client must fix; the message says how."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: type  # int, float, bool or str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    help: str = ""

    def describe(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return f"a string of at most {self.max_length} characters"
        noun = "an integer" if self.kind is int else "a number"
        return f"{noun} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"


_SEGMENT_SECONDS = ParamSpec(
    "segment_seconds", float, 10.0, 1.0, 300.0, help="length of each analysed segment, seconds"
)
_FRAMES_PER_SEGMENT = ParamSpec(
    "frames_per_segment", int, 4, 1, 16, help="frames shown to the model per segment"
)

SCHEMAS: dict[AnalysisType, tuple[ParamSpec, ...]] = {
    AnalysisType.HIGHLIGHTS: (
        ParamSpec("min_significance", int, 4, 1, 10, help="lowest significance (1-10) kept"),
        _SEGMENT_SECONDS,
        ParamSpec("max_highlights", int, 10, 1, 100, help="most highlights returned"),
        ParamSpec("make_reel", bool, True, help="write a highlight reel MP4"),
        _FRAMES_PER_SEGMENT,
    ),
    AnalysisType.WORKOUT: (
        _SEGMENT_SECONDS,
        _FRAMES_PER_SEGMENT,
        ParamSpec("exercise_hint", str, None, max_length=200, help="what the person is doing"),
    ),
}


def parse_analysis_type(value: object) -> AnalysisType:
    """The AnalysisType named by a client, or ParamsError listing the valid names."""
    try:
        return AnalysisType(value)
    except ValueError:
        allowed = " or ".join(t.value for t in AnalysisType)
        raise ParamsError(f"unknown analysis_type {value!r}; use {allowed}") from None


def validate_params(analysis_type: AnalysisType, raw: object) -> dict[str, Any]:
    """Check `raw` against the schema of `analysis_type`; return it with defaults filled in."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError('params must be a JSON object, e.g. {"segment_seconds": 10}')
    schema = {spec.name: spec for spec in SCHEMAS[analysis_type]}
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise ParamsError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)} for {analysis_type.value}; "
            f"allowed: {', '.join(sorted(schema))}"
        )
    checked = {name: spec.default for name, spec in schema.items()}
    for name, value in raw.items():
        if value is None and schema[name].default is None:
            continue  # an explicit null for an optional parameter means "not given"
        checked[name] = _check(schema[name], value)
    return checked


def parse_params_json(text: str | None) -> dict[str, Any]:
    """The `params` form field: a JSON object as a string; empty means {}."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ParamsError(f"params is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ParamsError('params must be a JSON object, e.g. {"segment_seconds": 10}')
    return value


def params_from_form(fields: dict[str, str]) -> dict[str, Any]:
    """Individual form fields (`min_significance=4`, as the old endpoints took them).

    Form values are always text, so each is read as a JSON scalar where it is one
    ("4" -> 4, "true" -> True) and kept as text otherwise ("squats" -> "squats").
    """
    params: dict[str, Any] = {}
    for name, text in fields.items():
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = text
        params[name] = value if isinstance(value, (int, float, bool, type(None))) else text
    return params


def _check(spec: ParamSpec, value: object) -> Any:
    problem = f"{spec.name} must be {spec.describe()}, got {_show(value)}"
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ParamsError(problem)
        return value
    if spec.kind is str:
        if not isinstance(value, str) or len(value) > (spec.max_length or 0):
            raise ParamsError(problem)
        return value.strip() or None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _is_finite(value):
        raise ParamsError(problem)
    if spec.kind is int:
        if value != int(value):
            raise ParamsError(problem)
        value = int(value)
    else:
        value = float(value)
    if (spec.minimum is not None and value < spec.minimum) or (
        spec.maximum is not None and value > spec.maximum
    ):
        raise ParamsError(problem)
    return value


def _is_finite(number: float) -> bool:
    """Whether `number` is a finite float; a JSON int like 10**400 has none (OverflowError)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _fmt(number: float | None) -> str:
    return str(int(number)) if number is not None and number == int(number) else str(number)


def _show(value: object) -> str:
    text = (
        json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    )
    return text if len(text) <= 40 else text[:37] + "..."
