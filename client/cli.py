"""`python -m client` (installed as `smolvlm-client`): the job API from a terminal.

    smolvlm-client upload match.mp4 --analysis highlights --params '{"segment_seconds": 5}'
    smolvlm-client upload gym.mp4 --no-analysis   # two-step: then `analyze ID --analysis workout`
    smolvlm-client watch ID      # live progress from the event stream, items as found
    smolvlm-client results ID    # pretty JSON; also `status ID` and `cancel ID`
    smolvlm-client sessions      # a table of sessions, newest first (`--json` for JSON)
    smolvlm-client export ID otio   # the highlights for a video editor (also edl, fcpxml)
    smolvlm-client chapters ID   # WebVTT chapters; `video ID -o FILE` the uploaded video

`upload` sends a video over 100 MiB resumably (tus, `client/resumable.py`): a dropped
connection is resumed from where the server stands, and running the same command again
after a crash resumes the same upload. `--resumable` does so for any size, `--no-resumable`
sends one multipart POST whatever the size; a server without tus gets the POST.

`upload` and `analyze` take `--webhook-url URL`: the server POSTs the session's end there,
and `watch` ends with one line on how that delivery went.

`--url` picks the server (default http://127.0.0.1:8000); `--api-key` or SMOLVLM_API_KEY
sends `Authorization: Bearer <key>`. Exit codes: 0 ok, 1 the job failed or was cancelled,
2 a usage, connection or API error, each reported as one line on stderr.

Only aiohttp, tuspy and `protocol` are used: a client needs nothing of the server's internals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mimetypes
import os
import shutil
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import msgspec

from client import resumable
from client.downloads import STDOUT, DownloadRefused, human_size, save, server_file_name
from client.listing import sessions_table, webhook_line
from protocol import (
    PARTIAL_ITEMS,
    AnalysisType,
    ParamsError,
    PartialItem,
    PartialKind,
    TimelineEntry,
    WorkoutSegment,
    parse_params_json,
)

PROG = "smolvlm-client"
DEFAULT_URL = "http://127.0.0.1:8000"
API_KEY_ENV = "SMOLVLM_API_KEY"
API = "/api/v1/video"

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR = 0, 1, 2
# Ctrl-C: the shell convention (128 + SIGINT).
EXIT_INTERRUPTED = 130
# A closed pipe on stdout: the shell convention (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141
# The errors of `results` that mean the job itself ended badly (API.md §3), not the request.
JOB_FAILED_ERRORS = frozenset({"Analysis failed", "Session was cancelled"})
TERMINAL_EVENTS = ("completed", "failed", "cancelled")

# A server that does not answer a connect in this long is not coming.
CONNECT_TIMEOUT_SECONDS = 10.0
# The server pings idle event streams every 15 s by default; silence this long is a dead link.
STREAM_READ_TIMEOUT_SECONDS = 60.0
# A dropped event stream is resumed with Last-Event-ID; give up after this many failures
# in a row (a restarting server is back within a few seconds).
STREAM_RETRIES = 5
STREAM_RETRY_DELAY_SECONDS = 1.0
# A webhook's first attempt is over within the server's 10 s attempt timeout; `watch` waits
# that long for it, so its last line says how the delivery went rather than "pending".
WEBHOOK_WAIT_SECONDS = 11.0
WEBHOOK_POLL_SECONDS = 0.2
EXPORT_FORMATS = ("otio", "edl", "fcpxml")
# From this size `upload` is resumable unless told otherwise: a multipart POST lost at
# 90% of a large file starts again from zero.
RESUMABLE_FROM_BYTES = 100 * 1024 * 1024


class ClientError(Exception):
    """Something went wrong that the user should read as one line; carries the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def api_error(status: int, reason: str, body: Any, retry_after: str | None = None) -> ClientError:
    """One line from API.md's JSON error body; exit code 1 when it says the job ended badly."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error, message = body["error"], body.get("message")
        text = f"{error}: {message}" if message and message != error else error
        exit_code = EXIT_JOB_FAILED if error in JOB_FAILED_ERRORS else EXIT_ERROR
    else:
        text, exit_code = f"the server answered {status} {reason}".strip(), EXIT_ERROR
    if retry_after:
        text += f"; retry after {retry_after} s"
    return ClientError(f"{text} (HTTP {status})", exit_code)


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event: its id, name and decoded JSON data."""

    id: str | None
    name: str
    data: Any


Download = contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]


class ApiClient:
    """The v1 session API over one aiohttp ClientSession; use as `async with`."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS),
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.close()

    async def upload(
        self,
        video: Path,
        analysis: str | None,
        params: dict[str, Any],
        webhook_url: str | None = None,
    ) -> dict:
        """Stream `video` to the upload route, its analysis queued (none: the two-step flow,
        state `uploaded`); the 202 body (`sessionId`)."""
        content_type = mimetypes.guess_type(video.name)[0] or "application/octet-stream"
        with video.open("rb") as file:
            form = aiohttp.FormData()
            if analysis is not None:
                form.add_field("analysis_type", analysis)
                form.add_field("params", json.dumps(params))
            if webhook_url is not None:
                form.add_field("webhook_url", webhook_url)
            form.add_field("file", file, filename=video.name, content_type=content_type)
            return await self._json("POST", f"{API}/upload", data=form)

    async def tus_offered(self) -> bool:
        """Whether the server takes resumable (tus 1.0.0) uploads."""
        try:
            return await resumable.tus_offered(self._http, self.url)
        except resumable.UploadRefused as refused:
            raise api_error(refused.status, "", refused.body) from None

    async def upload_resumable(
        self,
        video: Path,
        analysis: str | None,
        params: dict[str, Any],
        webhook_url: str | None = None,
        notice: TextIO = sys.stderr,
    ) -> dict:
        """As `upload`, through tus: retried and resumable (see client/resumable.py)."""
        metadata = {"filename": video.name}
        if analysis is not None:
            metadata.update(analysis_type=analysis, params=json.dumps(params))
        if webhook_url is not None:
            metadata["webhook_url"] = webhook_url
        try:
            session_id = await resumable.upload(
                self._http,
                self.url,
                video,
                metadata,
                lambda line: print(line, file=notice, flush=True),
            )
        except resumable.UploadRefused as refused:
            raise api_error(refused.status, "", refused.body) from None
        except resumable.UploadInterrupted as interrupted:
            raise ClientError(
                f"the upload of {video.name} stopped ({interrupted}); "
                "run the same command again to resume it"
            ) from None
        return {"sessionId": session_id}

    async def analyze(
        self,
        session_id: str,
        analysis: str,
        params: dict[str, Any],
        webhook_url: str | None = None,
    ) -> dict:
        """Start the analysis of an `uploaded` session (the two-step flow); the 202 body."""
        body: dict[str, Any] = {"analysis_type": analysis, "params": params}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        return await self._json("POST", f"{API}/analyze/{_segment(session_id)}", json=body)

    async def sessions(self, status: str | None = None, limit: int | None = None) -> dict:
        """The session list (`sessions`, `count`), newest first."""
        query = {"status": status, "limit": limit}
        query = {key: str(value) for key, value in query.items() if value is not None}
        return await self._json("GET", f"{API}/sessions", params=query)

    def export(self, session_id: str, export_format: str) -> Download:
        """The highlights as an editor's timeline file; use as `async with`."""
        return self.download(f"/results/{_segment(session_id)}/export/{quote(export_format)}")

    def chapters(self, session_id: str) -> Download:
        """The WebVTT chapters of a completed session; use as `async with`."""
        return self.download(f"/results/{_segment(session_id)}/chapters.vtt")

    def video(self, session_id: str) -> Download:
        """The uploaded video itself; use as `async with`."""
        return self.download(f"/results/{_segment(session_id)}/video")

    @contextlib.asynccontextmanager
    async def download(self, path: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response of `GET {API}{path}`, its body unread, once it is known not to be an
        error (else the API's error as a ClientError)."""
        async with self._http.get(f"{self.url}{API}{path}") as response:
            if response.status >= 400:
                raise await _error_from(response)
            yield response

    async def status(self, session_id: str) -> dict:
        return await self._json("GET", f"{API}/status/{_segment(session_id)}")

    async def results(self, session_id: str) -> dict:
        return await self._json("GET", f"{API}/results/{_segment(session_id)}")

    async def cancel(self, session_id: str) -> dict:
        return await self._json("POST", f"{API}/cancel/{_segment(session_id)}")

    async def events(self, session_id: str) -> AsyncGenerator[StreamEvent, None]:
        """The session's events up to its terminal one, resuming a dropped stream without loss."""
        url = f"{self.url}{API}/events/{_segment(session_id)}"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=STREAM_READ_TIMEOUT_SECONDS
        )
        # From the session's first event, so a late watcher still sees every partial item.
        last_id = "0"
        connected, failures = False, 0
        while True:
            headers = {"Last-Event-ID": last_id}
            try:
                async with self._http.get(url, headers=headers, timeout=timeout) as response:
                    if response.status == 204:
                        return  # API.md: the terminal event was already delivered
                    if response.status != 200:
                        raise await _error_from(response)
                    connected = True
                    async for event in parse_sse(response.content):
                        failures = 0
                        last_id = event.id or last_id
                        yield event
                        if event.name in TERMINAL_EVENTS:
                            return
            except (
                aiohttp.ClientPayloadError,
                aiohttp.ServerDisconnectedError,
                asyncio.TimeoutError,
            ):
                pass
            except aiohttp.ClientConnectionError:
                if not connected:
                    raise  # never reached the server: report it rather than retry quietly
            failures += 1
            if failures > STREAM_RETRIES:
                raise ClientError(f"lost the event stream of {session_id} and could not resume it")
            await asyncio.sleep(STREAM_RETRY_DELAY_SECONDS)

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict:
        async with self._http.request(method, self.url + path, **kwargs) as response:
            if response.status >= 400:
                raise await _error_from(response)
            return await response.json()


def _segment(session_id: str) -> str:
    """The id as one path segment: whatever was typed, it cannot reach another route."""
    return quote(session_id, safe="")


async def _error_from(response: aiohttp.ClientResponse) -> ClientError:
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = None
    return api_error(
        response.status, response.reason or "", body, response.headers.get("Retry-After")
    )


async def parse_sse(stream: aiohttp.StreamReader) -> AsyncGenerator[StreamEvent, None]:
    """Server-sent events from a response body (the WHATWG event-stream format)."""
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    async for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield StreamEvent(event_id, name, json.loads("\n".join(data)))
            event_id, name, data = None, "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value
        # An empty field is a comment (the server's keep-alive ping); others are ignored.


def partial_item(data: dict[str, Any]) -> PartialItem | None:
    """The item of a `partial` event's data as its declared type; None if it is not one."""
    try:
        return msgspec.convert(data["item"], PARTIAL_ITEMS[PartialKind(data["kind"])])
    except (KeyError, TypeError, ValueError):  # msgspec's ValidationError is a ValueError
        return None


def describe_item(item: PartialItem) -> str:
    """One line for a partial highlight, workout segment or judged segment."""
    when = f"{item.start_time}-{item.end_time}"
    if isinstance(item, WorkoutSegment):
        notes = f" - {item.form_notes}" if item.form_notes else ""
        return f"  + {when}  {item.exercise or 'rest'}, {item.reps} reps{notes}"
    return f"  + {when}  significance {item.significance}  {item.description or ''}"


class ProgressDisplay:
    """A one-line bar on a terminal, plain lines (one per step) anywhere else."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        # On a terminal the bar as drawn (to redraw it under a message); else the last step.
        self._line = ""

    def status(self, body: dict[str, Any]) -> None:
        percent = int(min(max(float(body.get("progress") or 0.0), 0.0), 1.0) * 100)
        if body.get("status") == "pending":
            position = body.get("queuePosition")
            step = f"waiting in the queue (position {position})" if position else "waiting"
        else:
            step = body.get("currentStep") or body.get("status", "")
        if self.live:
            self._draw(percent, step)
        elif step != self._line:
            self._line = step
            print(f"[{percent:3d}%] {step}", file=self.out, flush=True)

    def message(self, text: str) -> None:
        """A line of its own, above the bar."""
        self._clear()
        print(text, file=self.out, flush=True)
        if self.live and self._line:
            self.out.write(self._line)
            self.out.flush()

    def end(self) -> None:
        """Leave the last bar on screen and move below it."""
        if self.live and self._line:
            self.out.write("\n")
            self._line = ""

    def _draw(self, percent: int, step: str) -> None:
        columns = shutil.get_terminal_size().columns
        width = max(10, min(40, columns // 3))
        filled = width * percent // 100
        line = f"[{'#' * filled}{'-' * (width - filled)}] {percent:3d}%  {step}"
        self._line = line[: columns - 1]
        self.out.write("\r\x1b[2K" + self._line)
        self.out.flush()

    def _clear(self) -> None:
        if self.live and self._line:
            self.out.write("\r\x1b[2K")


async def watch(client: ApiClient, session_id: str, out: TextIO) -> str:
    """Show the session's progress and partial items until it ends; the terminal event's name."""
    display = ProgressDisplay(out)
    terminal: StreamEvent | None = None
    try:
        async with contextlib.aclosing(client.events(session_id)) as events:
            async for event in events:
                if event.name == "status":
                    display.status(event.data)
                elif event.name == "partial":
                    item = partial_item(event.data)
                    # Every judged segment is a timeline partial; the bar already counts them.
                    if item is not None and not isinstance(item, TimelineEntry):
                        display.message(describe_item(item))
                elif event.name in TERMINAL_EVENTS:
                    terminal = event
    finally:
        display.end()
    if terminal is None:
        # The stream said 204: it had already ended; the status route tells how.
        body = await client.status(session_id)
        terminal = StreamEvent(None, body["status"], body)
    if terminal.name == "failed":
        reason = terminal.data.get("error") or "no reason given"
        print(f"Analysis failed: {reason}", file=out, flush=True)
    else:
        print(f"Analysis {terminal.name}.", file=out, flush=True)
    webhook = terminal.data.get("webhook")
    if webhook:
        webhook = await first_attempt_of(client, session_id, webhook)
        print(webhook_line(webhook), file=out, flush=True)
    return terminal.name


async def first_attempt_of(client: ApiClient, session_id: str, webhook: dict) -> dict:
    """The ended session's webhook once its first attempt is over, or as it is after
    WEBHOOK_WAIT_SECONDS (a receiver that slow is the server's to retry, not ours to wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WEBHOOK_WAIT_SECONDS
    while (
        webhook.get("state") in ("waiting", "pending")
        and not webhook.get("attempts")
        and loop.time() < deadline
    ):
        await asyncio.sleep(WEBHOOK_POLL_SECONDS)
        webhook = (await client.status(session_id)).get("webhook") or webhook
    return webhook


def print_json(body: Any, out: TextIO) -> None:
    print(json.dumps(body, indent=2, ensure_ascii=False), file=out, flush=True)


async def run(args: argparse.Namespace, out: TextIO) -> int:
    """Carry out one parsed command; the exit code."""
    async with ApiClient(args.url, args.api_key) as client:
        return await COMMANDS[args.command](client, args, out)


async def upload_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    analysis = None if args.no_analysis else args.analysis or AnalysisType.HIGHLIGHTS.value
    send = client.upload_resumable if await _resumable(client, args) else client.upload
    accepted = await send(args.video, analysis, args.params, args.webhook_url)
    session_id = accepted["sessionId"]
    if args.no_watch or analysis is None:
        print(session_id, file=out, flush=True)
        return EXIT_OK
    print(f"Uploaded {args.video.name}: session {session_id}", file=out, flush=True)
    return await follow(client, session_id, out)


async def _resumable(client: ApiClient, args: argparse.Namespace) -> bool:
    """Whether this upload goes through tus: as asked, else by size if the server has tus."""
    if args.resumable is False:
        return False
    if args.resumable is None and args.video.stat().st_size < RESUMABLE_FROM_BYTES:
        return False
    if await client.tus_offered():
        return True
    if args.resumable:
        raise ClientError("the server does not take resumable uploads (tus); try --no-resumable")
    return False


async def analyze_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    await client.analyze(args.session_id, args.analysis, args.params, args.webhook_url)
    if args.no_watch:
        print(args.session_id, file=out, flush=True)
        return EXIT_OK
    print(f"Analysis started: session {args.session_id}", file=out, flush=True)
    return await follow(client, args.session_id, out)


async def follow(client: ApiClient, session_id: str, out: TextIO) -> int:
    """Watch a just started job to its end, then print its results."""
    with _hint_on_interrupt(session_id):
        ended = await watch(client, session_id, out)
    if ended != "completed":
        return EXIT_JOB_FAILED
    print_json(await client.results(session_id), out)
    return EXIT_OK


async def watch_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    ended = await watch(client, args.session_id, out)
    return EXIT_OK if ended == "completed" else EXIT_JOB_FAILED


async def json_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    """`status`, `results` and `cancel`: the API's answer as pretty JSON."""
    call = {"status": client.status, "results": client.results, "cancel": client.cancel}
    print_json(await call[args.command](args.session_id), out)
    return EXIT_OK


async def sessions_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = await client.sessions(args.status, args.limit)
    if args.json:
        print_json(body, out)
    else:
        print(sessions_table(body.get("sessions", []), args.status), file=out, flush=True)
    return EXIT_OK


async def export_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    async with client.export(args.session_id, args.format) as response:
        # The server's name (`<uploaded name>-highlights.<format>`) unless one was given;
        # only a name the user typed may replace an existing file.
        target = args.output or server_file_name(response) or f"{args.session_id}.{args.format}"
        return await _save(response, target, out, replace=args.output is not None)


async def chapters_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    async with client.chapters(args.session_id) as response:
        return await _save(response, args.output, out)


async def video_command(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    async with client.video(args.session_id) as response:
        return await _save(response, args.output, out)


async def _save(
    response: aiohttp.ClientResponse, target: str, out: TextIO, *, replace: bool = True
) -> int:
    """Save a download; on a file, one line saying where and how much."""
    out.flush()  # text already written must come before the bytes
    try:
        size = await save(response, target, out.buffer, replace=replace)
    except DownloadRefused as exc:
        raise ClientError(str(exc)) from None
    except OSError as exc:
        raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
    if target != STDOUT:
        print(f"Saved {target} ({human_size(size)})", file=out, flush=True)
    return EXIT_OK


COMMANDS = {
    "upload": upload_command,
    "analyze": analyze_command,
    "watch": watch_command,
    "status": json_command,
    "results": json_command,
    "cancel": json_command,
    "sessions": sessions_command,
    "export": export_command,
    "chapters": chapters_command,
    "video": video_command,
}


@contextlib.contextmanager
def _hint_on_interrupt(session_id: str) -> Iterator[None]:
    """Ctrl-C stops watching, not the job: say how to get back to it."""
    try:
        yield
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"\nStopped watching; the job goes on. Later: {PROG} watch {session_id} "
            f"(or {PROG} cancel {session_id})",
            file=sys.stderr,
        )
        raise


def _params(text: str) -> dict[str, Any]:
    try:
        return parse_params_json(text)
    except ParamsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    """The command line: global options, then one subcommand."""
    main_parser = argparse.ArgumentParser(
        prog=PROG,
        description="Upload videos to a smolvlm-video-server, follow their analysis and "
        "download what it made.",
        epilog="Exit codes: 0 ok, 1 the job failed or was cancelled, 2 usage/connection/API error.",
    )
    main_parser.add_argument("--url", default=DEFAULT_URL, help=f"server (default {DEFAULT_URL})")
    main_parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"API key if the server requires one (default: ${API_KEY_ENV})",
    )
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upload = commands.add_parser("upload", help="upload a video and watch its analysis")
    upload.add_argument("video", type=Path, help="the video file")
    _analysis_options(upload, default=None)
    upload.add_argument(
        "--no-analysis",
        action="store_true",
        help="only store the video (two-step flow): print the session id, start the "
        "analysis later with `analyze ID`",
    )
    upload.add_argument(
        "--no-watch", action="store_true", help="print the session id and return at once"
    )
    resumable_choice = upload.add_mutually_exclusive_group()
    resumable_choice.add_argument(
        "--resumable",
        action="store_true",
        default=None,
        help="upload in chunks that survive a dropped connection; the same command run again "
        f"resumes an unfinished upload (default for files from {RESUMABLE_FROM_BYTES // 2**20} "
        "MiB when the server offers it)",
    )
    resumable_choice.add_argument(
        "--no-resumable",
        dest="resumable",
        action="store_false",
        help="one multipart POST, whatever the size",
    )

    analyze = commands.add_parser(
        "analyze", help="start the analysis of a video stored with `upload --no-analysis`"
    )
    analyze.add_argument("session_id", metavar="ID")
    _analysis_options(analyze, default=AnalysisType.HIGHLIGHTS.value)
    analyze.add_argument(
        "--no-watch", action="store_true", help="print the session id and return at once"
    )

    for name, text in (
        ("watch", "follow a session's progress until it ends"),
        ("results", "print a completed session's results (JSON)"),
        ("status", "print a session's status (JSON)"),
        ("cancel", "cancel a session's job"),
    ):
        commands.add_parser(name, help=text).add_argument("session_id", metavar="ID")

    sessions = commands.add_parser("sessions", help="list sessions, newest first")
    sessions.add_argument(
        "--status", help="only sessions in this state (uploaded, pending, processing, ...)"
    )
    sessions.add_argument("--limit", type=int, help="at most this many (1 to 1000)")
    sessions.add_argument("--json", action="store_true", help="print the API's JSON, not a table")

    export = commands.add_parser(
        "export", help="download a completed session's highlights for a video editor"
    )
    export.add_argument("session_id", metavar="ID")
    export.add_argument(
        "format",
        choices=EXPORT_FORMATS,
        help="otio (OpenTimelineIO), edl (CMX 3600) or fcpxml (Final Cut Pro X)",
    )
    export.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to save it, - for stdout (default: the name the server gives, "
        "<video>-highlights.<format>, never replacing an existing file)",
    )

    chapters = commands.add_parser(
        "chapters", help="print or save a completed session's chapters (WebVTT)"
    )
    chapters.add_argument("session_id", metavar="ID")
    chapters.add_argument(
        "-o", "--output", metavar="FILE", default=STDOUT, help="save to FILE (default stdout)"
    )

    video = commands.add_parser("video", help="download a session's uploaded video")
    video.add_argument("session_id", metavar="ID")
    video.add_argument(
        "-o", "--output", metavar="FILE", required=True, help="where to save it, - for stdout"
    )
    return main_parser


def _analysis_options(command: argparse.ArgumentParser, default: str | None) -> None:
    """--analysis, --params and --webhook-url, shared by `upload` and `analyze`."""
    command.add_argument(
        "--analysis",
        choices=[kind.value for kind in AnalysisType],
        default=default,
        help="what to look for (default highlights)",
    )
    command.add_argument(
        "--params", type=_params, default={}, help="JSON object, e.g. '{\"segment_seconds\": 5}'"
    )
    command.add_argument(
        "--webhook-url",
        metavar="URL",
        help="the server POSTs the session's end there, signed (it needs WEBHOOK_SECRET)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `smolvlm-client`; returns the exit code."""
    command_line = parser()
    args = command_line.parse_args(argv)
    if args.command == "upload" and args.no_analysis and (args.analysis or args.params):
        command_line.error("--analysis and --params go with `analyze ID`, not --no-analysis")
    if args.command == "upload" and not args.video.is_file():
        print(f"error: no such file: {args.video}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return asyncio.run(run(args, sys.stdout))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except aiohttp.ClientConnectorError as exc:
        # asyncio's strerror repeats the address: the errno's own text reads better. Name
        # lookup errors (negative errno) carry theirs in strerror.
        error = exc.os_error
        if error.errno is not None and error.errno > 0:
            reason = os.strerror(error.errno)
        else:
            reason = error.strerror or str(error)
        print(f"error: cannot connect to {args.url}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        print(
            f"error: talking to {args.url} failed: {str(exc) or type(exc).__name__}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left (`... | head`): stop quietly, as the shell's own tools do, and keep
        # Python's flush of stdout at exit from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
