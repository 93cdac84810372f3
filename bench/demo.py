"""`make demo`: the whole service on this machine, offline, in well under a minute.

Builds the steered tiny SmolVLM2 (it answers "8" to everything, so highlights, thumbnails
and a reel are made) into `./demo-data/` once and keeps it as a cache, writes a 20 s sample
video, starts `python -m server` on a free loopback port, uploads the video with the
command-line client (which shows the live progress from the event stream, then the
results), stops the server with SIGTERM and removes the video and the server's data.

    python -m bench.demo [--keep-running]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from client import cli as client

DEMO_DATA = Path("demo-data")
MODEL_DIR = DEMO_DATA / "steered-smolvlm2"
VIDEO_SECONDS = 20.0
# Short segments give the progress bar (and the reel) several steps to show.
PARAMS = '{"segment_seconds": 2}'
# The server imports mlx and starts a warm worker; on a busy 2-core machine that is seconds.
STARTUP_TIMEOUT_SECONDS = 120.0
# `python -m server` lets running jobs and streams end within its own 10 s shutdown timeout.
STOP_TIMEOUT_SECONDS = 30.0
LOG_TAIL_LINES = 20
# Settings a user may have exported for a real deployment: the demo makes its own.
FOREIGN_SETTINGS = ("API_KEY", "CORS_ORIGINS", "MAX_UPLOAD_MB", "MAX_VIDEO_SECONDS")


def ensure_model(directory: Path) -> Path:
    """The steered tiny model in `directory`, built the first time (then kept as a cache)."""
    if (directory / "config.json").is_file():
        return directory
    from inference_worker.tiny_model import build_tiny_model

    print(f"Building the tiny demo model into {directory}/ (once) ...", flush=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and renamed, so an interrupted build never leaves a half model as the cache.
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
    try:
        build_tiny_model(building, answer="8")
        building.rename(directory)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return directory


def write_sample_video(path: Path) -> Path:
    """A 20 s synthetic clip with a sound track (the reel keeps the audio)."""
    from tests.media import write_video

    return write_video(path, seconds=VIDEO_SECONDS, width=320, height=240, audio=True)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, model: Path, data_dir: Path, log: Path) -> subprocess.Popen:
    """`python -m server` in its own session, so Ctrl-C reaches only the demo, which stops it."""
    env = {key: value for key, value in os.environ.items() if key not in FOREIGN_SETTINGS}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("MLX_DISABLE_COMPILE", "1")
    command = [
        sys.executable,
        "-m",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(model.resolve()),
        "--data-dir",
        str(data_dir),
    ]
    with log.open("wb") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def wait_until_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    """Poll /health until it answers; fail with the server's log if the server exits first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health in time:\n{tail(log)}")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM, as a service manager would; SIGKILL only if it overstays."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        print("The server did not stop in time; killing it.", file=sys.stderr)
        server.kill()
        server.wait()


def tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def main(argv: list[str] | None = None) -> int:
    """Run the demo; the client's exit code (0 when the analysis completed)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the server up after the run (for the page in a browser) until Ctrl-C",
    )
    args = parser.parse_args(argv)
    # A SIGTERM (a CI timeout, `kill`) cleans up like Ctrl-C: the server is in its own session.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    model = ensure_model(MODEL_DIR)
    workspace = Path(tempfile.mkdtemp(prefix="smolvlm-demo-"))
    server = None
    try:
        video = write_sample_video(workspace / "demo-match.mp4")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = workspace / "server.log"
        print(f"Starting the server on {url} ...", flush=True)
        server = start_server(port, model, workspace / "data", log)
        wait_until_healthy(url, server, log)
        print(f"Server ready. Open {url}/ in a browser for the live page.\n", flush=True)

        code = client.main(
            ["--url", url, "upload", str(video), "--analysis", "highlights", "--params", PARAMS]
        )
        if args.keep_running:
            print(f"\nThe server stays up at {url}/ (sample video: {video}). Ctrl-C stops it.")
            try:
                server.wait()
            except KeyboardInterrupt:
                print()
        return code
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return client.EXIT_ERROR
    except KeyboardInterrupt:
        return client.EXIT_INTERRUPTED
    finally:
        if server is not None:
            stop_server(server)
            print(f"Server stopped (exit code {server.returncode}).", flush=True)
        shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
