"""The messages a server and a worker exchange.

Server -> worker: one `JobSpec`, as one JSON line on the worker's stdin.
Worker -> server: events, one JSON object per line on the worker's stdout, each with a
`type` tag. A run ends with exactly one terminal event: `Result` or `Error`.

`decode_event` never raises: a line that is not a valid event becomes an `InvalidLine`
value, so a reader can log it and carry on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import msgspec

from protocol.analysis_type import AnalysisType
from protocol.results import HighlightFound, PartialItem, TimelineEntry, WorkoutSegment
from protocol.video import VideoInfo


class ErrorCode(str, Enum):
    """Why a run failed, as the `error` field of an `Error` event."""

    INVALID_VIDEO = "invalid_video"
    INVALID_PARAMS = "invalid_params"
    INVALID_JOB = "invalid_job"
    MODEL_UNAVAILABLE = "model_unavailable"
    # The probe could not read the URL it was given (the store's fault, not the file's).
    SOURCE_UNREACHABLE = "source_unreachable"
    INTERNAL_ERROR = "internal_error"


class ModelState(str, Enum):
    """Whether a worker's model can be used; the values are the wire strings."""

    LOADING = "loading"
    READY = "ready"
    UNAVAILABLE = "unavailable"


class PartialKind(str, Enum):
    """Which list of the results a partial item belongs to; the values are the wire strings."""

    TIMELINE = "timeline"  # highlights: one judged segment
    HIGHLIGHTS = "highlights"  # highlights: one kept highlight
    SEGMENTS = "segments"  # workout: one stretch of one exercise (or rest)


class LogLevel(str, Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job. Paths are the server's; never shown to clients."""

    session_id: str
    analysis_type: AnalysisType
    video_path: str
    output_dir: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    # The client's name for the upload, reported back in results["video"]["filename"].
    filename: str = ""
    # The server's probe of the video: the worker trusts it instead of probing again.
    # None (older servers, by-hand runs): the worker probes the file itself.
    video_info: VideoInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["analysis_type"] = self.analysis_type.value
        return data


class ProtocolError(ValueError):
    """A JobSpec line that cannot be used."""


def encode_job(spec: JobSpec) -> str:
    """One JSON line (with its newline) for the worker's stdin."""
    return json.dumps(spec.to_dict(), separators=(",", ":")) + "\n"


def decode_job(line: str | bytes) -> JobSpec:
    """Parse a JobSpec line; raises ProtocolError saying what is wrong."""
    data = _load_object(line)
    if isinstance(data, str):
        raise ProtocolError(data)
    required = ("session_id", "analysis_type", "video_path", "output_dir", "model")
    missing = [name for name in required if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        raise ProtocolError(f"job spec is missing {', '.join(missing)}")
    try:
        analysis_type = AnalysisType(data["analysis_type"])
    except ValueError:
        raise ProtocolError(f"unknown analysis_type {data['analysis_type']!r}") from None
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError("job spec params must be an object")
    filename = data.get("filename", "")
    if not isinstance(filename, str):
        raise ProtocolError("job spec filename must be a string")
    video_info = data.get("video_info")
    if video_info is not None:
        try:
            video_info = VideoInfo.from_dict(video_info)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProtocolError("job spec video_info is not a probe result") from None
    return JobSpec(
        session_id=data["session_id"],
        analysis_type=analysis_type,
        video_path=data["video_path"],
        output_dir=data["output_dir"],
        model=data["model"],
        params=params,
        filename=filename,
        video_info=video_info,
    )


# ---- worker -> server events -------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """How far the run is, in [0, 1], and a step a person can read."""

    progress: float
    step: str
    type: str = field(default="progress", init=False)


@dataclass(frozen=True)
class Partial:
    """One item of a results list (`kind` names the list), sent as soon as it is found.

    A line whose item is not of its list's type (`PARTIAL_ITEMS`) is an `InvalidLine`:
    a reader logs and drops it. A partial is a preview; the job's result, which repeats
    every item, is what counts, so one bad item is no reason to fail the job.
    """

    kind: PartialKind
    item: PartialItem
    type: str = field(default="partial", init=False)


# The item type of each results list a `partial` event can name.
PARTIAL_ITEMS: dict[PartialKind, type[PartialItem]] = {
    PartialKind.TIMELINE: TimelineEntry,
    PartialKind.HIGHLIGHTS: HighlightFound,
    PartialKind.SEGMENTS: WorkoutSegment,
}


@dataclass(frozen=True)
class Log:
    level: LogLevel
    message: str
    type: str = field(default="log", init=False)


@dataclass(frozen=True)
class ModelReport:
    """Not terminal: a warm worker's model loaded (`ready`) or cannot be (`unavailable`, why).

    Sent once, right after preloading, before the worker reads its JobSpec.
    """

    state: ModelState
    reason: str = ""
    type: str = field(default="model", init=False)


@dataclass(frozen=True)
class Result:
    """Terminal: the run's results, as a JSON object.

    A job's results are `protocol.results.JobResults` (API.md's results object, artifact
    names relative to the output dir): the worker builds them typed and sends
    `results_json` of them; the runner checks them with `decode_results`, so a result that
    breaks the contract fails its job with that reason. They stay JSON here because the
    line is read before it is known to be one (and a probe's answer is {"video": VideoInfo}).
    """

    results: dict[str, Any]
    type: str = field(default="result", init=False)


@dataclass(frozen=True)
class Error:
    """Terminal: the run failed; `error` is an ErrorCode value, `message` says what to fix."""

    error: str
    message: str
    type: str = field(default="error", init=False)


@dataclass(frozen=True)
class InvalidLine:
    """Not an event: what `decode_event` returns for a line it cannot use."""

    line: str
    reason: str


Event = Progress | Partial | Log | ModelReport | Result | Error
TERMINAL_EVENTS = (Result, Error)

# Lines longer than this are not worth reporting back in full when they are garbage.
_ECHO_LIMIT = 200


def is_terminal(event: object) -> bool:
    return isinstance(event, TERMINAL_EVENTS)


def encode_event(event: Event) -> str:
    """One JSON line (with its newline). Rejects NaN/inf so the line stays valid JSON."""
    data = asdict(event)
    if isinstance(event, Log):
        data["level"] = event.level.value
    elif isinstance(event, Partial):
        data["kind"] = event.kind.value
        data["item"] = msgspec.to_builtins(event.item)
    elif isinstance(event, ModelReport):
        data["state"] = event.state.value
    return json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n"


def decode_event(line: str | bytes) -> Event | InvalidLine:
    """Parse one stdout line of a worker. Never raises."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    echo = text.strip()[:_ECHO_LIMIT]
    data = _load_object(text)
    if isinstance(data, str):
        return InvalidLine(echo, data)
    kind = data.get("type")
    try:
        if kind == "progress":
            progress = data["progress"]
            if not _is_number(progress) or not 0.0 <= progress <= 1.0:
                return InvalidLine(echo, "progress must be a number in [0, 1]")
            return Progress(float(progress), _text(data, "step"))
        if kind == "partial":
            listed = PartialKind(data["kind"])
            return Partial(listed, msgspec.convert(data["item"], PARTIAL_ITEMS[listed]))
        if kind == "log":
            return Log(LogLevel(data.get("level", "info")), _text(data, "message"))
        if kind == "model":
            return ModelReport(ModelState(data["state"]), _text({"reason": "", **data}, "reason"))
        if kind == "result":
            results = data["results"]
            if not isinstance(results, dict):
                return InvalidLine(echo, "results must be an object")
            return Result(results)
        if kind == "error":
            return Error(_text(data, "error"), _text(data, "message"))
    except KeyError as missing:
        return InvalidLine(echo, f"{kind} event without {missing}")
    except (TypeError, ValueError) as exc:  # msgspec's ValidationError is a ValueError
        return InvalidLine(echo, f"bad {kind} event: {exc}")
    return InvalidLine(echo, f"unknown event type {kind!r}")


def _load_object(line: str | bytes) -> dict[str, Any] | str:
    """The JSON object on a line, or a string saying why there is none."""
    try:
        data = json.loads(line, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"not JSON: {exc}"
    except RecursionError:
        return "not JSON: nested too deeply"
    if not isinstance(data, dict):
        return "not a JSON object"
    return data


def _not_json(constant: str) -> float:
    """Python's json reads NaN and Infinity; JSON has neither, and no time or score is one."""
    raise ValueError(f"{constant} is not a JSON number")


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
