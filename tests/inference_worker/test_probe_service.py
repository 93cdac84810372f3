"""The real `python -m inference_worker --probe-service`: one answer per request, many files."""

from __future__ import annotations

import subprocess

from protocol import ProbeRequest, decode_event, encode_probe_request
from tests import media
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
