"""The language the server and a worker speak: a JobSpec in, JSON-lines events out.

Pure data and validation: no I/O, no aiohttp, no mlx. Both sides import this package;
neither imports the other.
"""

from protocol.messages import (
    TERMINAL_EVENTS,
    AnalysisType,
    Error,
    ErrorCode,
    Event,
    InvalidLine,
    JobSpec,
    Log,
    LogLevel,
    ModelReport,
    ModelState,
    Partial,
    PartialKind,
    Progress,
    ProtocolError,
    Result,
    decode_event,
    decode_job,
    encode_event,
    encode_job,
    is_terminal,
)
from protocol.model_names import looks_like_hf_id, model_display_name
from protocol.params import (
    SCHEMAS,
    ParamsError,
    ParamSpec,
    params_from_form,
    parse_analysis_type,
    parse_params_json,
    validate_params,
)
from protocol.probe import ProbeRequest, decode_probe_request, encode_probe_request
from protocol.video import VideoInfo

DEFAULT_MODEL = "mlx-community/SmolVLM2-500M-Video-Instruct-mlx"

__all__ = [
    "DEFAULT_MODEL",
    "SCHEMAS",
    "TERMINAL_EVENTS",
    "AnalysisType",
    "Error",
    "ErrorCode",
    "Event",
    "InvalidLine",
    "JobSpec",
    "Log",
    "LogLevel",
    "ModelReport",
    "ModelState",
    "PartialKind",
    "ParamSpec",
    "Partial",
    "ProbeRequest",
    "ParamsError",
    "Progress",
    "ProtocolError",
    "Result",
    "VideoInfo",
    "decode_event",
    "decode_job",
    "decode_probe_request",
    "encode_event",
    "encode_job",
    "encode_probe_request",
    "is_terminal",
    "looks_like_hf_id",
    "model_display_name",
    "params_from_form",
    "parse_analysis_type",
    "parse_params_json",
    "validate_params",
]
