"""Config: every environment variable is also a flag, a flag wins, bad values fail clearly."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from protocol import DEFAULT_MODEL
from server.config import Config
from server.version import VERSION

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_match_api_md():
    config = Config.from_env_and_args([], {})
    assert config.model == DEFAULT_MODEL
    assert config.max_concurrent_jobs == 2
    assert config.session_ttl_hours == 24
    assert config.api_key is None and config.cors_origins == ()
    assert config.warm_workers == 1 and config.job_timeout_seconds is None


def test_every_environment_variable_is_read():
    environ = {
        "HOST": "0.0.0.0",
        "PORT": "9000",
        "DATA_DIR": "/var/lib/smolvlm",
        "SMOLVLM_MODEL": "owner/model",
        "MAX_CONCURRENT_JOBS": "3",
        "MAX_QUEUED_JOBS": "7",
        "MAX_UPLOAD_MB": "100",
        "MAX_VIDEO_SECONDS": "90.5",
        "JOB_TIMEOUT_SECONDS": "600",
        "SESSION_TTL_HOURS": "2",
        "API_KEY": "k",
        "CORS_ORIGINS": "http://localhost:3000, https://app.example.com/",
        "WARM_WORKERS": "0",
    }
    config = Config.from_env_and_args([], environ)
    assert config == Config(
        host="0.0.0.0",
        port=9000,
        data_dir=Path("/var/lib/smolvlm"),
        model="owner/model",
        max_concurrent_jobs=3,
        max_queued_jobs=7,
        max_upload_mb=100,
        max_video_seconds=90.5,
        job_timeout_seconds=600.0,
        session_ttl_hours=2.0,
        api_key="k",
        cors_origins=("http://localhost:3000", "https://app.example.com"),
        warm_workers=0,
    )


def test_a_flag_wins_over_its_environment_variable():
    config = Config.from_env_and_args(
        ["--port", "8123", "--cors-origins", "*"], {"PORT": "9000", "CORS_ORIGINS": "http://a"}
    )
    assert config.port == 8123 and config.cors_origins == ("*",)


@pytest.mark.parametrize(
    "argv, environ, fragment",
    [
        (["--port", "http"], {}, "--port: must be an integer"),
        ([], {"PORT": "70000"}, "PORT: must be a port number"),
        ([], {"MAX_CONCURRENT_JOBS": "0"}, "MAX_CONCURRENT_JOBS: must be at least 1"),
        (["--max-video-seconds", "-5"], {}, "must be a positive number"),
        ([], {"WARM_WORKERS": "-1"}, "WARM_WORKERS: must be 0 or more"),
        ([], {"CORS_ORIGINS": "example.com"}, "CORS_ORIGINS: origins look like"),
        (["--no-such-flag"], {}, "unrecognized arguments"),
        (["--role", "boss"], {}, "--role: must be one of all, api, worker"),
        ([], {"REDIS_URL": "localhost:6379"}, "REDIS_URL: a Redis URL looks like"),
        ([], {"NODE_LEASE_SECONDS": "0"}, "NODE_LEASE_SECONDS: must be a positive number"),
    ],
)
def test_a_bad_value_is_an_argparse_error_naming_the_setting(argv, environ, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        Config.from_env_and_args(argv, environ)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_a_job_timeout_of_zero_means_no_limit():
    assert Config.from_env_and_args([], {"JOB_TIMEOUT_SECONDS": "0"}).job_timeout_seconds is None


def test_the_api_key_stays_out_of_the_config_repr():
    assert "hunter2" not in repr(Config(api_key="hunter2"))


def test_a_cluster_node_is_configured_by_its_variables_and_keeps_the_redis_password_out():
    config = Config.from_env_and_args(
        ["--role", "worker"],
        {
            "REDIS_URL": "redis://:s3cret@10.0.0.5:6379/0",
            "NODE_ID": "gpu-1",
            "NODE_LEASE_SECONDS": "5",
            "MAX_JOB_ATTEMPTS": "2",
            "WORKER_COMMAND": "nice -n 5 python -m inference_worker",
        },
    )
    assert (config.role, config.node_id, config.node_lease_seconds) == ("worker", "gpu-1", 5.0)
    assert config.runs_jobs and not config.serves_api and config.max_job_attempts == 2
    assert config.worker_command == ("nice", "-n", "5", "python", "-m", "inference_worker")
    assert "s3cret" not in repr(config)


def test_the_version_is_the_one_of_setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert VERSION == parser["metadata"]["version"]
