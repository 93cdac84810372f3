"""`python -m client` as a user runs it: a real process against the real app, whose
jobs run in the real worker with the tiny model, on a loopback port.

Output is checked as a terminal user or a script sees it: plain lines when stdout is not
a TTY, a redrawn bar when it is, one `error: ...` line on stderr, and the exit code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import re
import socket
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import opentimelineio as otio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from client import cli as cli_module
from tests.media import write_text_file
from tests.server.http_helpers import start, until_running, until_status

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REAL_WORKER = (sys.executable, "-m", "inference_worker")
# Only a bound against a hanging client: a passing test never comes near it.
WAIT_SECONDS = 30.0
UNKNOWN = str(uuid.UUID(int=7, version=4))


@dataclass
class Run:
    code: int
    out: str
    err: str


def client_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != cli_module.API_KEY_ENV}
    env.update(extra)
    return env


async def cli(
    url: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Run:
    """Run `python -m client --url URL ARGS...` to the end, stdout a pipe (not a TTY);
    in `cwd` if given (this checkout's client still the one that runs)."""
    env = env or client_env()
    if cwd is not None:
        env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client",
        "--url",
        url,
        *args,
        cwd=cwd or REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return Run(process.returncode, out.decode(), err.decode())


def one_error_line(run: Run, expected: str) -> bool:
    """The client's way to fail: nothing on stdout, one `error: ...` line on stderr, exit 2."""
    return (
        run.code == 2
        and run.out == ""
        and run.err.startswith(f"error: {expected}")
        and run.err.count("\n") == 1
    )


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
        (["status", UNKNOWN], "error: Session not found (HTTP 404)"),
        (["upload", "TEXT", "--no-watch"], "error: Unsupported media type: "),
        (["upload", "VIDEO", "--params", '{"bogus": 1}'], "error: Invalid parameters: "),
        # This server has no WEBHOOK_SECRET: the server's reason says how to set one.
        (
            ["upload", "VIDEO", "--webhook-url", "http://127.0.0.1:9/hook"],
            "error: Bad request: webhook_url needs a signing secret: start the server with "
            "WEBHOOK_SECRET",
        ),
        (["analyze", UNKNOWN, "--analysis", "workout"], "error: Session not found (HTTP 404)"),
        (["sessions", "--limit", "0"], "error: Bad request: limit must be an integer from 1 to"),
        (["sessions", "--status", "done"], "error: Bad request: status must be one of uploaded,"),
        (["export", UNKNOWN, "otio"], "error: Session not found (HTTP 404)"),
        (["chapters", UNKNOWN], "error: Session not found (HTTP 404)"),
        (["video", UNKNOWN, "-o", "copy.mp4"], "error: Session not found (HTTP 404)"),
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


def test_an_error_without_text_is_named_by_its_type(capsys, monkeypatch):
    """A bare timeout (aiohttp's own `total` timer raises one) has no text of its own."""

    async def times_out(args, out):
        raise asyncio.TimeoutError()

    monkeypatch.setattr(cli_module, "run", times_out)
    url = "http://127.0.0.1:9"
    assert cli_module.main(["--url", url, "status", str(uuid.uuid4())]) == 2
    assert capsys.readouterr().err == f"error: talking to {url} failed: TimeoutError\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["upload", "missing.mp4"], "error: no such file: missing.mp4"),
        (["upload", "VIDEO", "--params", "{nope"], "params is not valid JSON"),
        (["upload", "VIDEO", "--analysis", "dance"], "invalid choice: 'dance'"),
        (
            ["upload", "VIDEO", "--no-analysis", "--params", "{}", "--analysis", "workout"],
            "--analysis and --params go with `analyze ID`, not --no-analysis",
        ),
        (["export", UNKNOWN, "mp4"], "invalid choice: 'mp4'"),
        (["video", UNKNOWN], "the following arguments are required: -o/--output"),
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


async def completed(client: TestClient, url: str, video: Path, *args: str) -> str:
    """`upload VIDEO --no-watch ARGS...`, then wait for the job to complete: the session id."""
    upload = await cli(url, "upload", str(video), "--no-watch", *args)
    assert upload.code == 0, upload.err
    session_id = upload.out.strip()
    await until_status(client, session_id, "completed")
    return session_id


async def test_export_saves_under_the_servers_name_and_refuses_what_it_cannot_do(
    aiohttp_client, tmp_path, sample_video, steered_model_dir
):
    """Default name from Content-Disposition, never over an existing file; `-o -` is stdout;
    the 409 of an EDL at 10 fps and the 404 of a workout come as the server's message."""
    url, client = await serve(aiohttp_client, tmp_path, steered_model_dir)
    highlights = await completed(client, url, sample_video, "--params", '{"segment_seconds": 4}')
    workout = await completed(client, url, sample_video, "--analysis", "workout")
    found = (await (await client.get(f"/api/v1/video/results/{highlights}")).json())["results"]
    here = tmp_path / "edits"
    here.mkdir()

    saved = await cli(url, "export", highlights, "otio", cwd=here)
    assert saved.code == 0 and saved.err == "", saved.err
    assert re.fullmatch(r"Saved sample-highlights\.otio \(\d+\.\d KiB\)\n", saved.out)
    timeline = otio.adapters.read_from_file(str(here / "sample-highlights.otio"))
    assert len(list(timeline.find_clips())) == found["highlights_found"] >= 1

    (here / "sample-highlights.otio").write_text("my own edit")
    again = await cli(url, "export", highlights, "otio", cwd=here)
    assert one_error_line(
        again,
        "sample-highlights.otio exists already; to replace it, pass -o sample-highlights.otio",
    ), again.err
    assert (here / "sample-highlights.otio").read_text() == "my own edit"
    replaced = await cli(
        url, "export", highlights, "otio", "-o", "sample-highlights.otio", cwd=here
    )
    assert replaced.code == 0, replaced.err
    assert otio.adapters.read_from_file(str(here / "sample-highlights.otio")).find_clips()

    piped = await cli(url, "export", highlights, "fcpxml", "-o", "-", cwd=here)
    assert piped.code == 0 and piped.err == ""
    assert piped.out.startswith("<?xml") and "<fcpxml" in piped.out

    edl = await cli(url, "export", highlights, "edl", cwd=here)
    assert one_error_line(edl, "Format cannot hold this video: "), edl.err
    assert "this video runs at 10 fps" in edl.err and edl.err.endswith("(HTTP 409)\n")
    none = await cli(url, "export", workout, "otio", cwd=here)
    assert one_error_line(none, "No highlights: "), none.err
    assert none.err.endswith("(HTTP 404)\n")
    # Neither refusal left a file, not even a partial one.
    assert os.listdir(here) == ["sample-highlights.otio"]


async def test_chapters_print_webvtt_or_save_it_and_are_refused_before_the_results(
    aiohttp_client, tmp_path, sample_video, steered_model_dir
):
    url, client = await serve(aiohttp_client, tmp_path, steered_model_dir)
    stored = await cli(url, "upload", str(sample_video), "--no-analysis")
    session_id = await completed(client, url, sample_video, "--params", '{"segment_seconds": 4}')

    printed = await cli(url, "chapters", session_id)
    assert printed.code == 0 and printed.err == ""
    assert printed.out.startswith("WEBVTT\n")
    assert re.search(r"^00:00:00\.000 --> 00:00:\d\d\.\d{3}$", printed.out, re.MULTILINE)
    saved = await cli(url, "chapters", session_id, "-o", "match.vtt", cwd=tmp_path)
    assert saved.code == 0
    assert saved.out == f"Saved match.vtt ({len(printed.out.encode())} bytes)\n"
    assert (tmp_path / "match.vtt").read_text() == printed.out

    early = await cli(url, "chapters", stored.out.strip())
    assert one_error_line(early, "Results not ready: The session is uploaded (HTTP 400)"), early.err


async def test_video_saves_the_uploaded_file_byte_for_byte(
    aiohttp_client, tmp_path, sample_video, tiny_model_dir
):
    url, _ = await serve(aiohttp_client, tmp_path, tiny_model_dir)
    session_id = (await cli(url, "upload", str(sample_video), "--no-analysis")).out.strip()

    run = await cli(url, "video", session_id, "-o", "copy.mp4", cwd=tmp_path)

    assert run.code == 0 and run.err == ""
    assert run.out.startswith("Saved copy.mp4 (") and run.out.endswith(" KiB)\n")
    assert (tmp_path / "copy.mp4").read_bytes() == sample_video.read_bytes()
    missing = await cli(url, "video", session_id, "-o", str(tmp_path / "no-such-dir" / "x.mp4"))
    assert one_error_line(missing, f"no such directory: {tmp_path / 'no-such-dir'}"), missing.err


async def test_upload_no_analysis_then_analyze_runs_the_two_step_flow(
    aiohttp_client, tmp_path, sample_video, tiny_model_dir
):
    url, client = await serve(aiohttp_client, tmp_path, tiny_model_dir)

    stored = await cli(url, "upload", str(sample_video), "--no-analysis")
    assert stored.code == 0, stored.err
    session_id = stored.out.strip()
    assert uuid.UUID(session_id).version == 4
    assert (await until_status(client, session_id, "uploaded"))["analysisType"] is None

    run = await cli(url, "analyze", session_id, "--analysis", "workout")
    assert run.code == 0, run.err
    assert run.out.splitlines()[0] == f"Analysis started: session {session_id}"
    assert "Analysis completed." in run.out.splitlines()
    assert results_json(run.out)["results"]["analysisType"] == "workout"

    again = await cli(url, "analyze", session_id)
    assert one_error_line(again, "Conflict: "), again.err
    assert again.err.endswith("(HTTP 409)\n")


async def test_sessions_is_a_table_newest_first_with_local_times_or_the_apis_json(
    aiohttp_client, tmp_path, sample_video, tiny_model_dir
):
    url, client = await serve(aiohttp_client, tmp_path, tiny_model_dir)
    # Five hours behind UTC, in POSIX form (no tz database needed).
    env = client_env(TZ="EST5")
    empty = await cli(url, "sessions", env=env)
    assert empty.code == 0 and empty.out == "No sessions.\n"
    ran = await completed(client, url, sample_video, "--analysis", "workout")
    stored = (await cli(url, "upload", str(sample_video), "--no-analysis")).out.strip()

    table = await cli(url, "sessions", env=env)

    assert table.code == 0 and table.err == ""
    header, *rows = table.out.splitlines()
    assert header.split() == ["ID", "ANALYSIS", "STATUS", "CREATED", "PROGRESS"]
    assert [row.split()[:3] for row in rows] == [
        [stored, "-", "uploaded"],
        [ran, "workout", "completed"],
    ]
    assert rows[0].endswith("  0%") and rows[1].endswith("100%")
    assert header.index("PROGRESS") + len("PROGRESS") == len(rows[0]) == len(rows[1])
    created = (await (await client.get(f"/api/v1/video/status/{ran}")).json())["createdAt"]
    utc = datetime.fromisoformat(created)
    est = utc.astimezone(timezone(-timedelta(hours=5))).strftime("%Y-%m-%d %H:%M")
    assert f"  {est}  " in rows[1]

    only = await cli(url, "sessions", "--status", "completed", "--limit", "1", env=env)
    assert [row.split()[0] for row in only.out.splitlines()[1:]] == [ran]
    none = await cli(url, "sessions", "--status", "failed")
    assert none.code == 0 and none.out == "No failed sessions.\n"
    as_json = await cli(url, "sessions", "--json", "--limit", "1")
    body = json.loads(as_json.out)
    assert body["count"] == 1 and body["sessions"][0]["sessionId"] == stored


@dataclass
class Receiver:
    """A webhook receiver on loopback: `/ok` answers 204, `/down` 500; keeps the ids."""

    url: str = ""
    got: dict[str, list[str]] = field(default_factory=lambda: {"ok": [], "down": []})

    async def hook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.got[name].append(request.headers["webhook-id"])
        return web.Response(status=204 if name == "ok" else 500)


async def test_webhook_url_goes_with_upload_and_analyze_and_watch_tells_the_delivery(
    aiohttp_client, aiohttp_server, tmp_path, sample_video, tiny_model_dir
):
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", receiver.hook)
    receiver.url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    url, _ = await serve(
        aiohttp_client,
        tmp_path,
        tiny_model_dir,
        webhook_secret="whsec_" + base64.b64encode(bytes(range(32))).decode(),
        webhook_allow_private=True,
        # One attempt while the client looks: the retry comes long after the test is over.
        webhook_first_retry_seconds=3600.0,
    )

    delivered = await cli(url, "upload", str(sample_video), "--webhook-url", f"{receiver.url}/ok")
    assert delivered.code == 0, delivered.err
    lines = delivered.out.splitlines()
    end = lines.index("Analysis completed.")
    assert lines[end + 1] == f"Webhook delivered to {receiver.url}/ok (HTTP 204, 1 attempt)."
    assert lines[end + 2] == "{"  # then the results

    stored = (await cli(url, "upload", str(sample_video), "--no-analysis")).out.strip()
    run = await cli(
        url, "analyze", stored, "--analysis", "workout", "--webhook-url", f"{receiver.url}/down"
    )
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[lines.index("Analysis completed.") + 1] == (
        f"Webhook to {receiver.url}/down not delivered yet (1 attempt, last: HTTP 500); "
        "the server retries."
    )
    assert receiver.got == {"ok": [results_json(delivered.out)["sessionId"]], "down": [stored]}


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


def test_a_partial_item_is_read_as_its_lists_type_and_described_by_its_fields():
    item = {
        "start": 0.0,
        "end": 30.0,
        "start_time": "00:00",
        "end_time": "00:30",
        "exercise": "squat",
        "reps": 12,
        "form_notes": "steady",
    }
    segment = cli_module.partial_item({"sessionId": "s", "kind": "segments", "item": item})
    assert cli_module.describe_item(segment) == "  + 00:00-00:30  squat, 12 reps - steady"
    assert cli_module.partial_item({"sessionId": "s", "kind": "highlights", "item": item}) is None
