"""`python -m client` as a user runs it: a real process against the real app, whose
jobs run in the real worker with the tiny model, on a loopback port.

Output is checked as a terminal user or a script sees it: plain lines when stdout is not
a TTY, a redrawn bar when it is, one `error: ...` line on stderr, and the exit code.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from client import cli as cli_module
from tests.media import write_text_file
from tests.server.http_helpers import start, until_running

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REAL_WORKER = (sys.executable, "-m", "inference_worker")
# Only a bound against a hanging client: a passing test never comes near it.
WAIT_SECONDS = 30.0


@dataclass
class Run:
    code: int
    out: str
    err: str


def client_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != cli_module.API_KEY_ENV}
    env.update(extra)
    return env


async def cli(url: str, *args: str, env: dict[str, str] | None = None) -> Run:
    """Run `python -m client --url URL ARGS...` to the end, stdout a pipe (not a TTY)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client",
        "--url",
        url,
        *args,
        cwd=REPO,
        env=env or client_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return Run(process.returncode, out.decode(), err.decode())


async def serve(aiohttp_client, tmp_path, model: Path, **overrides) -> tuple[str, TestClient]:
    """The app with the real worker on a loopback port, stopped with the test: URL, client."""
    client = await start(
        aiohttp_client,
        tmp_path,
        like_run_app=True,
        worker_command=REAL_WORKER,
        model=str(model),
        **overrides,
    )
    return str(client.make_url("")).rstrip("/"), client


def results_json(out: str) -> dict:
    """The pretty JSON that ends an output (after the progress lines)."""
    return json.loads(out[out.index("\n{") + 1 :])


async def test_upload_shows_progress_lines_and_partial_items_then_prints_the_results(
    aiohttp_client, tmp_path, sample_video, steered_model_dir
):
    url, _ = await serve(aiohttp_client, tmp_path, steered_model_dir)

    run = await cli(url, "upload", str(sample_video), "--params", '{"segment_seconds": 4}')

    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith("Uploaded sample.mp4: session ")
    assert any(line.startswith("[") and "%] Analyzing segment" in line for line in lines)
    assert any(line.startswith("  + 00:00-") and "significance 8" in line for line in lines)
    # One line per highlight found; the judged segments (timeline partials) are not listed.
    assert len([line for line in lines if line.startswith("  + ")]) == 1
    assert "Analysis completed." in lines
    assert "\r" not in run.out and "\x1b" not in run.out  # not a terminal: no bar drawing
    body = results_json(run.out)
    assert body["status"] == "completed" and body["results"]["highlights_found"] == 1
    assert run.err == ""


async def test_no_watch_prints_only_the_id_and_the_other_commands_follow_it(
    aiohttp_client, tmp_path, sample_video, tiny_model_dir
):
    url, _ = await serve(aiohttp_client, tmp_path, tiny_model_dir)

    upload = await cli(url, "upload", str(sample_video), "--analysis", "workout", "--no-watch")
    assert upload.code == 0, upload.err
    session_id = upload.out.strip()
    assert uuid.UUID(session_id).version == 4

    watch = await cli(url, "watch", session_id)
    assert watch.code == 0 and watch.out.splitlines()[-1] == "Analysis completed."
    status = await cli(url, "status", session_id)
    assert status.code == 0 and json.loads(status.out)["progress"] == 1.0
    results = await cli(url, "results", session_id)
    assert results.code == 0
    assert json.loads(results.out)["results"]["analysisType"] == "workout"


async def test_cancel_ends_a_running_job_and_a_terminal_watch_draws_a_bar_then_exits_1(
    aiohttp_client, tmp_path, make_video, tiny_model_dir
):
    url, client = await serve(aiohttp_client, tmp_path, tiny_model_dir)
    video = make_video("long.mp4", seconds=60.0)
    upload = await cli(
        url, "upload", str(video), "--params", '{"segment_seconds": 1}', "--no-watch"
    )
    session_id = upload.out.strip()
    await until_running(client, session_id)

    async with TerminalWatch(url, session_id) as screen:
        await screen.shows("Analyzing segment 4/")
        cancel = await cli(url, "cancel", session_id)
        assert cancel.code == 0, cancel.err
        assert json.loads(cancel.out)["status"] == "cancelled"
    assert screen.code == 1
    assert re.search(r"\r\x1b\[2K\[#+-+\] +\d+%  Analyzing segment", screen.text)  # redrawn
    assert screen.text.rstrip().endswith("Analysis cancelled.")

    results = await cli(url, "results", session_id)
    assert results.code == 1 and results.out == ""
    assert results.err.startswith("error: Session was cancelled: ")
    assert results.err.endswith("(HTTP 400)\n") and results.err.count("\n") == 1


async def test_a_failed_job_exits_1_with_its_reason(aiohttp_client, tmp_path, sample_video):
    url, _ = await serve(aiohttp_client, tmp_path, tmp_path / "missing-model")

    run = await cli(url, "upload", str(sample_video))

    assert run.code == 1
    last = run.out.splitlines()[-1]
    assert last.startswith("Analysis failed: ") and "missing-model" in last


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status", "not-a-uuid"], "error: Invalid session id: A session id is a UUID4 string"),
        (["status", str(uuid.UUID(int=7, version=4))], "error: Session not found (HTTP 404)"),
        (["upload", "TEXT", "--no-watch"], "error: Unsupported media type: "),
        (["upload", "VIDEO", "--params", '{"bogus": 1}'], "error: Invalid parameters: "),
    ],
)
async def test_api_errors_are_one_line_on_stderr_and_exit_2(
    aiohttp_client, tmp_path, sample_video, tiny_model_dir, args, expected
):
    url, _ = await serve(aiohttp_client, tmp_path, tiny_model_dir)
    text = write_text_file(tmp_path / "notes.mp4")
    args = [{"TEXT": str(text), "VIDEO": str(sample_video)}.get(arg, arg) for arg in args]

    run = await cli(url, *args)

    assert run.code == 2 and run.out == ""
    assert run.err.startswith(expected) and run.err.count("\n") == 1, run.err


async def test_the_api_key_comes_from_the_flag_or_the_environment(
    aiohttp_client, tmp_path, sample_video, tiny_model_dir
):
    url, _ = await serve(aiohttp_client, tmp_path, tiny_model_dir, api_key="s3cret")

    refused = await cli(url, "upload", str(sample_video))
    assert refused.code == 2
    assert refused.err.startswith("error: Unauthorized: ") and "(HTTP 401)" in refused.err

    upload = await cli(url, "--api-key", "s3cret", "upload", str(sample_video), "--no-watch")
    assert upload.code == 0, upload.err
    # The event stream gets the key as a Bearer header too.
    watch = await cli(url, "watch", upload.out.strip(), env=client_env(SMOLVLM_API_KEY="s3cret"))
    assert watch.code == 0 and watch.out.splitlines()[-1] == "Analysis completed."


def test_nothing_listening_is_a_connection_error_exit_2(capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{port}"
        code = cli_module.main(["--url", url, "status", str(uuid.uuid4())])
    assert code == 2
    assert capsys.readouterr().err == f"error: cannot connect to {url}: Connection refused\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["upload", "missing.mp4"], "error: no such file: missing.mp4"),
        (["upload", "VIDEO", "--params", "{nope"], "params is not valid JSON"),
        (["upload", "VIDEO", "--analysis", "dance"], "invalid choice: 'dance'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_before_any_request(capsys, sample_video, args, expected):
    args = [str(sample_video) if arg == "VIDEO" else arg for arg in args]
    try:
        code = cli_module.main(["--url", "http://127.0.0.1:9", *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    assert expected in capsys.readouterr().err


class TerminalWatch:
    """`watch ID` with its stdout on a pseudo-terminal, as in an interactive shell.

    The terminal is read by the event loop (`add_reader`), so the test can wait for what
    the screen shows while the server, in the same loop, goes on serving.
    """

    def __init__(self, url: str, session_id: str) -> None:
        self.args = (sys.executable, "-m", "client", "--url", url, "watch", session_id)
        self.text = ""
        self.code: int | None = None
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()

    async def __aenter__(self) -> TerminalWatch:
        self._master, replica = pty.openpty()
        self._process = await asyncio.create_subprocess_exec(
            *self.args, cwd=REPO, env=client_env(), stdout=replica, stderr=replica
        )
        os.close(replica)  # only the child holds it now, so its exit ends the reads
        asyncio.get_running_loop().add_reader(self._master, self._read)
        return self

    def _read(self) -> None:
        try:
            chunk = os.read(self._master, 4096)
        except OSError:  # EIO: the child's side of the terminal closed
            chunk = b""
        if chunk:
            self.text += chunk.decode(errors="replace")
        else:
            asyncio.get_running_loop().remove_reader(self._master)
            self._closed.set()
        self._changed.set()

    async def shows(self, text: str) -> None:
        """Wait until the screen shows `text` (bounded: a broken client fails, not hangs)."""

        async def appears() -> None:
            while text not in self.text:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(appears(), WAIT_SECONDS)

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None:
            self._process.kill()  # the test failed: do not wait for a job that never ends
        try:
            self.code = await asyncio.wait_for(self._process.wait(), WAIT_SECONDS)
            await asyncio.wait_for(self._closed.wait(), WAIT_SECONDS)
        finally:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
