"""The real `python -m inference_worker --probe-service`: one answer per request, many files."""

from __future__ import annotations

import asyncio
import subprocess

from inference_worker.video import probe
from protocol import ProbeRequest, decode_event, encode_probe_request
from tests import media
from tests.inference_worker.http_files import SIGNATURE_QUERY, refused_url, serve_files
from tests.inference_worker.worker_runner import REPO, RUN_TIMEOUT, WORKER, worker_env


def test_one_process_answers_each_request_in_order_and_exits_at_the_end_of_stdin(
    sample_video, tmp_path
):
    notes = media.write_text_file(tmp_path / "notes.mp4")
    requests = [
        encode_probe_request(ProbeRequest(str(sample_video), "match.mp4")),
        encode_probe_request(ProbeRequest(str(notes), "notes.mp4")),
        "this is not a request\n",
        encode_probe_request(ProbeRequest(str(tmp_path / "gone.mp4"), "gone.mp4")),
        encode_probe_request(ProbeRequest(str(sample_video))),
    ]
    run = subprocess.run(
        [*WORKER, "--probe-service"],
        input="".join(requests),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0
    answers = [decode_event(line) for line in run.stdout.splitlines()]
    assert [answer.type for answer in answers] == ["result", "error", "error", "error", "result"]
    first = answers[0].results["video"]
    assert first["filename"] == "match.mp4" and (first["width"], first["height"]) == (160, 120)
    assert answers[1].error == "invalid_video"
    assert answers[2].error == "invalid_job"
    assert answers[3].error == "internal_error", "a server-side path problem is not the file's"
    assert answers[4].results["video"]["filename"] == sample_video.name


async def test_urls_are_probed_and_one_that_cannot_be_read_is_the_sources_fault(
    aiohttp_server, sample_video, tmp_path
):
    """A URL's failure is not the file's: `source_unreachable` (a URL without its size is
    the server's own mistake: `internal_error`), and no signature on stderr."""
    bucket_dir = tmp_path / "bucket"
    bucket_dir.mkdir()
    good = bucket_dir / "match.mp4"
    good.write_bytes(sample_video.read_bytes())
    notes = media.write_text_file(bucket_dir / "notes.mp4")
    bucket = await serve_files(aiohttp_server, bucket_dir)
    requests = [
        ProbeRequest(bucket.url("match.mp4"), "", good.stat().st_size),
        ProbeRequest(bucket.url("notes.mp4"), "notes.mp4", notes.stat().st_size),
        ProbeRequest(bucket.url("missing.mp4"), "missing.mp4", 1000),
        ProbeRequest(refused_url(), "refused.mp4", 1000),
        ProbeRequest(bucket.url("match.mp4"), "match.mp4"),
        ProbeRequest(str(sample_video), "local.mp4"),
    ]
    # In a thread: the HTTP server answering the probe runs on this test's event loop.
    run = await asyncio.to_thread(
        subprocess.run,
        [*WORKER, "--probe-service"],
        input="".join(encode_probe_request(request) for request in requests),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert run.returncode == 0
    answers = [decode_event(line) for line in run.stdout.splitlines()]
    assert [answer.type for answer in answers] == [
        "result", "error", "error", "error", "error", "result"
    ]  # fmt: skip
    assert answers[0].results["video"] == {**probe(sample_video).to_dict(), "filename": "match.mp4"}
    assert answers[1].error == "invalid_video"
    assert [answer.error for answer in answers[2:5]] == [
        "source_unreachable", "source_unreachable", "internal_error"
    ]  # fmt: skip
    assert "404" in answers[2].message and "refused" in answers[3].message
    assert "size" in answers[4].message, "a URL without its size is the server's mistake"
    assert answers[5].results["video"]["filename"] == "local.mp4"
    assert SIGNATURE_QUERY not in run.stdout + run.stderr
