"""Settings of the service: environment variables, each mirrored by a command-line flag.

A flag wins over its variable; a bad value of either is an argparse error that names the
setting, so `python -m server` stops with one clear line instead of a traceback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import shlex
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import DEFAULT_MODEL


@dataclass(frozen=True)
class Config:
    """Every setting of API.md's configuration table, plus a few knobs tests turn."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    model: str = DEFAULT_MODEL
    max_concurrent_jobs: int = 2
    max_queued_jobs: int = 32
    max_upload_mb: int = 2048
    max_video_seconds: float = 3600.0
    job_timeout_seconds: float | None = None
    session_ttl_hours: float = 24.0
    # A resumable upload left unfinished this long expires (tus Upload-Expires).
    upload_expires_hours: float = 24.0
    api_key: str | None = field(default=None, repr=False)  # a secret stays out of logs
    cors_origins: tuple[str, ...] = ()
    warm_workers: int = 1
    max_concurrent_uploads: int = 8
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_allow_private: bool = False
    webhook_retry_seconds: float = 6 * 3600.0
    webhook_first_retry_seconds: float = 5.0
    # Many nodes, one service: with a Redis URL, sessions, queue and events live there.
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    # Files in a bucket (s3://bucket/prefix) instead of DATA_DIR, which is then only scratch.
    storage_url: str | None = None
    # 0: the node streams stored files to clients; N: it redirects to a URL signed for N s.
    storage_redirect_seconds: int = 0
    role: str = "all"
    node_id: str = field(default_factory=lambda: default_node_id())
    node_lease_seconds: float = 15.0
    max_job_attempts: int = 3
    # What runs one job: a JobSpec on stdin, JSON-lines events on stdout.
    worker_command: tuple[str, ...] = (sys.executable, "-m", "inference_worker")
    # Not settings an operator needs; tests point them at fixture scripts or shorten them.
    probe_command: tuple[str, ...] = (sys.executable, "-m", "inference_worker", "--probe-service")
    # Reading a container's headers and one frame takes well under a second; a file that
    # holds the demuxer longer than this is hostile or broken.
    probe_timeout_seconds: float = 30.0
    sse_ping_seconds: float = 15.0
    disconnect_poll_seconds: float = 0.5

    @property
    def runs_jobs(self) -> bool:
        """Whether this node takes jobs (roles `all` and `worker`)."""
        return self.role in ("all", "worker")

    @property
    def serves_api(self) -> bool:
        """Whether this node serves the session API (roles `all` and `api`)."""
        return self.role in ("all", "api")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @classmethod
    def from_env_and_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Read the environment, then the flags (a flag wins); exits with usage on a bad value.

        `argv` defaults to the command line and `environ` to the process environment.
        """
        environ = environ if environ is not None else os.environ
        parser = _parser()
        args = parser.parse_args(argv)
        values: dict[str, Any] = {}
        for setting in _SETTINGS:
            raw = getattr(args, setting.name)
            source = setting.flag
            if raw is None and setting.env in environ:
                raw, source = environ[setting.env], setting.env
            if raw is None:
                continue
            try:
                values[setting.name] = setting.parse(raw)
            except ValueError as exc:
                parser.error(f"{source}: {exc}")
        return cls(**values)


@dataclass(frozen=True)
class _Setting:
    name: str
    env: str
    parse: Callable[[str], Any]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


ROLES = ("all", "api", "worker")


def default_node_id() -> str:
    """Host name and pid: unique among the nodes of a cluster, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _role(raw: str) -> str:
    role = raw.strip().lower()
    if role not in ROLES:
        raise ValueError(f"must be one of {', '.join(ROLES)}, got {raw!r}")
    return role


def _redis_url(raw: str) -> str | None:
    url = raw.strip()
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"a Redis URL looks like redis://host:6379/0, got {raw!r}")
    return url or None


def _command(raw: str) -> tuple[str, ...]:
    command = tuple(shlex.split(raw))
    if not command:
        raise ValueError("must name a program")
    return command


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _port(raw: str) -> int:
    port = _int(raw)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be a port number from 1 to 65535, got {raw!r}")
    return port


def _int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"must be an integer, got {raw!r}") from None


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError(f"must be at least 1, got {raw!r}")
    return value


def _non_negative_int(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {raw!r}")
    return value


def _positive_number(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number, got {raw!r}")
    return value


def _timeout(raw: str) -> float | None:
    """Empty or 0 means no limit."""
    if raw.strip() in ("", "0"):
        return None
    return _positive_number(raw)


def _switch(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"must be 1 or 0 (true or false), got {raw!r}")


def _webhook_secret(raw: str) -> str | None:
    """A Standard Webhooks key: `whsec_` and the base64 of 24 to 64 bytes."""
    text = raw.strip()
    if not text:
        return None
    body = text.removeprefix("whsec_")
    try:
        size = len(base64.b64decode(body, validate=True)) if text != body else 0
    except binascii.Error:
        size = 0
    if not 24 <= size <= 64:
        raise ValueError(
            "must be whsec_ followed by the base64 of 24 to 64 random bytes, e.g. "
            'python -c "import base64, secrets; '
            "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
        )
    return text


def _storage_url(raw: str) -> str | None:
    url = raw.strip()
    if not url:
        return None  # set but empty: files under DATA_DIR, as when unset
    scheme, _, rest = url.partition("://")
    if scheme != "s3" or not rest.split("/", 1)[0]:
        raise ValueError(
            f"use s3://bucket or s3://bucket/prefix (any S3-compatible store; Google Cloud "
            f"Storage through its S3 API with AWS_ENDPOINT_URL), got {url!r}"
        )
    return url.rstrip("/")


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"origins look like https://app.example.com or *, got {origin!r}")
    return origins


_SETTINGS = (
    _Setting("host", "HOST", _text, "interface to listen on"),
    _Setting("port", "PORT", _port, "port to listen on"),
    _Setting("data_dir", "DATA_DIR", lambda raw: Path(_text(raw)), "uploads, artifacts, store"),
    _Setting("model", "SMOLVLM_MODEL", _text, "Hugging Face id or local path of the model"),
    _Setting("max_concurrent_jobs", "MAX_CONCURRENT_JOBS", _positive_int, "workers at once"),
    _Setting("max_queued_jobs", "MAX_QUEUED_JOBS", _positive_int, "pending jobs before 503"),
    _Setting("max_upload_mb", "MAX_UPLOAD_MB", _positive_int, "upload limit in MiB"),
    _Setting("max_video_seconds", "MAX_VIDEO_SECONDS", _positive_number, "longest video"),
    _Setting("job_timeout_seconds", "JOB_TIMEOUT_SECONDS", _timeout, "0 = no limit"),
    _Setting("session_ttl_hours", "SESSION_TTL_HOURS", _positive_number, "session expiry"),
    _Setting(
        "upload_expires_hours",
        "UPLOAD_EXPIRES_HOURS",
        _positive_number,
        "an unfinished resumable upload expires",
    ),
    _Setting("api_key", "API_KEY", _optional_text, "require Authorization: Bearer <key>"),
    _Setting("cors_origins", "CORS_ORIGINS", _origins, "comma-separated allowed origins"),
    _Setting("warm_workers", "WARM_WORKERS", _non_negative_int, "idle workers kept loaded"),
    _Setting("max_concurrent_uploads", "MAX_CONCURRENT_UPLOADS", _positive_int, "uploads at once"),
    _Setting("webhook_secret", "WEBHOOK_SECRET", _webhook_secret, "whsec_... key signing webhooks"),
    _Setting(
        "webhook_allow_private",
        "WEBHOOK_ALLOW_PRIVATE",
        _switch,
        "1 = webhooks may call loopback/private addresses",
    ),
    _Setting(
        "webhook_retry_seconds",
        "WEBHOOK_RETRY_SECONDS",
        _positive_number,
        "how long a webhook is retried",
    ),
    _Setting(
        "webhook_first_retry_seconds",
        "WEBHOOK_FIRST_RETRY_SECONDS",
        _positive_number,
        "first retry delay, doubling after",
    ),
    _Setting("worker_command", "WORKER_COMMAND", _command, "command that runs one job"),
    _Setting("redis_url", "REDIS_URL", _redis_url, "run as a node of a cluster on this Redis"),
    _Setting("storage_url", "STORAGE_URL", _storage_url, "s3://bucket/prefix for files"),
    _Setting(
        "storage_redirect_seconds",
        "STORAGE_REDIRECT_SECONDS",
        _non_negative_int,
        "N = file routes redirect to a URL signed for N s; 0 = stream",
    ),
    _Setting("role", "NODE_ROLE", _role, "all, api (HTTP only) or worker (jobs only)"),
    _Setting("node_id", "NODE_ID", _text, "this node's name in the cluster"),
    _Setting("node_lease_seconds", "NODE_LEASE_SECONDS", _positive_number, "job lease"),
    _Setting("max_job_attempts", "MAX_JOB_ATTEMPTS", _positive_int, "runs before a job fails"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="SmolVLM2 video analysis service. Every flag can also be set by the "
        "environment variable named in its help; the flag wins.",
    )
    for setting in _SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            metavar=setting.env,
            default=None,
            help=f"{setting.help} (env {setting.env})",
        )
    return parser
