"""The real worker process on synthetic videos with the tiny real SmolVLM2.

The tiny model's weights are random, so these tests check structure, events and files,
not words; the analysis logic itself is tested with scripted replies elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import time
import uuid

import av
import pytest

from protocol import AnalysisType, JobSpec, PartialKind, decode_event, encode_job, results_json
from tests import media
from tests.inference_worker.worker_runner import (
    REPO,
    WORKER,
    assert_clean_channel,
    assert_progress_monotonic,
    run_cli,
    run_spec,
    worker_env,
)

STUCK_IN_NATIVE_CALL = REPO / "tests" / "inference_worker" / "stuck_in_native_call.py"

pytestmark = pytest.mark.slow


def make_spec(video, output_dir, model, analysis=AnalysisType.HIGHLIGHTS, **params) -> JobSpec:
    return JobSpec(
        session_id=str(uuid.uuid4()),
        analysis_type=analysis,
        video_path=str(video),
        output_dir=str(output_dir),
        model=str(model),
        params=params,
        filename="match.mp4",
    )


HIGHLIGHT_KEYS = {
    "start",
    "end",
    "start_time",
    "end_time",
    "significance",
    "description",
    "thumbnail",
}
TIMELINE_KEYS = HIGHLIGHT_KEYS - {"thumbnail"}
SEGMENT_KEYS = {"start", "end", "start_time", "end_time", "exercise", "reps", "form_notes"}


def test_highlights_job_speaks_only_events_and_returns_the_api_shape(
    sample_video, tiny_model_dir, tmp_path
):
    run = run_spec(make_spec(sample_video, tmp_path / "out", tiny_model_dir, segment_seconds=4))
    assert_clean_channel(run)
    assert_progress_monotonic(run)
    assert run.returncode == 0, run.stderr[-2000:]
    results = run.terminal.results
    assert results["analysisType"] == "highlights"
    assert results["model"] == tiny_model_dir.name  # never the server path
    assert str(tmp_path) not in json.dumps(results)
    assert results["video"] == {
        "filename": "match.mp4",
        "duration_seconds": pytest.approx(12.0, abs=0.2),
        "width": 160,
        "height": 120,
        "fps": pytest.approx(10.0),
    }
    assert isinstance(results["video_description"], str) and results["video_description"]
    assert isinstance(results["criteria"], list) and results["criteria"]
    assert results["highlights_found"] == len(results["highlights"])
    assert isinstance(results["processing_time_seconds"], float)
    for highlight in results["highlights"]:
        assert set(highlight) == HIGHLIGHT_KEYS
    assert run.of_type("progress")[-1].progress == 1.0
    # The timeline: every 4-s segment of the 12-s clip, end to end, whatever the model said.
    timeline = results["timeline"]
    assert [(t["start"], t["start_time"]) for t in timeline] == [
        (0.0, "00:00"),
        (4.0, "00:04"),
        (8.0, "00:08"),
    ]
    assert timeline[-1]["end"] == pytest.approx(12.0, abs=0.2)
    for entry in timeline:
        assert set(entry) == TIMELINE_KEYS
        assert entry["significance"] is None or 1 <= entry["significance"] <= 10
    live = [
        results_json(event.item)
        for event in run.of_type("partial")
        if event.kind is PartialKind.TIMELINE
    ]
    assert live == timeline


def test_steered_model_finds_highlights_with_decodable_thumbnails_and_reel(
    sample_video, steered_model_dir, tmp_path
):
    """A real SmolVLM2 whose weights always answer "8" judges every segment significant."""
    out = tmp_path / "out"
    run = run_spec(make_spec(sample_video, out, steered_model_dir, segment_seconds=4))
    assert_clean_channel(run)
    assert run.returncode == 0, run.stderr[-2000:]
    results = run.terminal.results
    assert results["highlights"], results
    # Adjacent significant segments merge: the whole clip is one highlight.
    assert [(h["start"], h["end"], h["significance"]) for h in results["highlights"]] == [
        (0.0, pytest.approx(12.0, abs=0.2), 8)
    ]
    partials = run.of_type("partial")
    assert [{k: v for k, v in h.items() if k != "thumbnail"} for h in results["highlights"]] == [
        results_json(event.item) for event in partials if event.kind is PartialKind.HIGHLIGHTS
    ]
    # Every judged segment, in order, live and in the results: 12 s in 4-s segments.
    timeline = [
        results_json(event.item) for event in partials if event.kind is PartialKind.TIMELINE
    ]
    assert timeline == results["timeline"]
    assert [(t["start"], t["significance"]) for t in timeline] == [(0.0, 8), (4.0, 8), (8.0, 8)]
    for highlight in results["highlights"]:
        with av.open(str(out / highlight["thumbnail"])) as image:
            assert next(image.decode(video=0)).width > 0
    reel = results["reel"]
    assert reel["file"] == "reel.mp4"
    with av.open(str(out / reel["file"])) as container:
        assert container.streams.video and container.streams.audio  # the source has audio
        assert float(container.duration / av.time_base) == pytest.approx(
            reel["duration_seconds"], abs=0.3
        )
    assert sorted(os.listdir(out)) == ["reel.mp4", "thumbnails"]  # no temp files left


def test_make_reel_false_writes_no_reel(sample_video, steered_model_dir, tmp_path):
    out = tmp_path / "out"
    run = run_spec(
        make_spec(sample_video, out, steered_model_dir, segment_seconds=6, make_reel=False)
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.terminal.results["reel"] is None
    assert not (out / "reel.mp4").exists()


def test_workout_job_returns_segments_and_summary(make_video, tiny_model_dir, tmp_path):
    video = make_video("gym.mp4", seconds=8.0)
    spec = make_spec(
        video,
        tmp_path / "out",
        tiny_model_dir,
        AnalysisType.WORKOUT,
        segment_seconds=4,
        exercise_hint="squats",
    )
    run = run_spec(spec)
    assert_clean_channel(run)
    assert_progress_monotonic(run)
    assert run.returncode == 0, run.stderr[-2000:]
    results = run.terminal.results
    assert results["analysisType"] == "workout"
    assert results["segments"]
    for segment in results["segments"]:
        assert set(segment) == SEGMENT_KEYS
        assert isinstance(segment["reps"], int) and segment["reps"] >= 0
    covered = [(s["start"], s["end"]) for s in results["segments"]]
    assert covered[0][0] == 0.0 and covered[-1][1] == pytest.approx(8.0, abs=0.2)
    assert set(results["summary"]) == {
        "exercises",
        "total_reps",
        "active_seconds",
        "exercise_totals",
    }
    partials = run.of_type("partial")
    assert {event.kind for event in partials} == {PartialKind.SEGMENTS}
    assert [results_json(event.item) for event in partials] == results["segments"]


def test_by_hand_mode_prints_the_same_events(sample_video, tiny_model_dir, tmp_path):
    run = run_cli(
        "--video",
        str(sample_video),
        "--analysis",
        "workout",
        "--model",
        str(tiny_model_dir),
        "--params",
        '{"segment_seconds": 6}',
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert_clean_channel(run)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.terminal.type == "result" and run.terminal.results["analysisType"] == "workout"
    # The same job as the server sends it; greedy decoding gives the same replies.
    spec = make_spec(
        sample_video, tmp_path / "served", tiny_model_dir, AnalysisType.WORKOUT, segment_seconds=6
    )
    served = run_spec(dataclasses.replace(spec, filename=sample_video.name))
    assert without_timing(run.events) == without_timing(served.events)


def without_timing(events: list) -> list:
    """The events with what differs between two identical runs (timings) left out."""
    kept = []
    for event in events:
        if event.type == "result":
            results = {k: v for k, v in event.results.items() if k != "processing_time_seconds"}
            event = dataclasses.replace(event, results=results)
        elif event.type == "log":  # e.g. "model ... ready in 3.17 s"
            event = dataclasses.replace(event, message=re.sub(r"[\d.]+ s\b", "# s", event.message))
        kept.append(event)
    return kept


BAD_VIDEOS = {
    "zero-byte": lambda path: media.write_zero_bytes(path),
    "text renamed .mp4": lambda path: media.write_text_file(path),
    "truncated mp4": lambda path: media.write_truncated(
        path, media.write_video(path.with_name("src.mp4"), seconds=4.0)
    ),
    "audio only": lambda path: media.write_audio_only(path.with_suffix(".m4a")),
    "still image": lambda path: media.write_still_image(path.with_suffix(".png")),
    "random bytes": lambda path: media.write_random_bytes(path),
}


@pytest.mark.parametrize("kind", BAD_VIDEOS)
def test_bad_videos_give_an_invalid_video_error_and_a_nonzero_exit(kind, tiny_model_dir, tmp_path):
    video = BAD_VIDEOS[kind](tmp_path / "upload.mp4")
    run = run_spec(make_spec(video, tmp_path / "out", tiny_model_dir))
    assert_clean_channel(run)
    assert run.returncode == 1
    assert run.terminal.type == "error" and run.terminal.error == "invalid_video"
    assert run.terminal.message and str(tmp_path) not in run.terminal.message


def test_probe_mode_reports_video_facts(sample_video):
    run = run_cli("--probe", str(sample_video), "--filename", "match.mp4")
    assert_clean_channel(run)
    assert run.returncode == 0
    video = run.terminal.results["video"]
    assert video["filename"] == "match.mp4" and video["has_audio"] is True
    assert video["width"] == 160 and video["height"] == 120


def test_probe_mode_rejects_a_non_video(tmp_path):
    run = run_cli("--probe", str(media.write_text_file(tmp_path / "notes.mp4")))
    assert_clean_channel(run)
    assert run.returncode == 1 and run.terminal.error == "invalid_video"


def test_missing_model_is_an_error_naming_it(sample_video, tmp_path):
    run = run_spec(make_spec(sample_video, tmp_path / "out", tmp_path / "no-such-model"))
    assert_clean_channel(run)
    assert run.returncode == 1
    assert run.terminal.error == "model_unavailable"
    assert "no-such-model" in run.terminal.message and str(tmp_path) not in run.terminal.message


def test_invalid_params_are_rejected_by_the_worker_too(sample_video, tiny_model_dir, tmp_path):
    run = run_spec(make_spec(sample_video, tmp_path / "out", tiny_model_dir, colour="red"))
    assert run.returncode == 1
    assert run.terminal.error == "invalid_params" and "allowed:" in run.terminal.message


def test_garbage_job_spec_is_an_error_event(tmp_path):
    done = subprocess.run(
        WORKER,
        input="this is not json\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env(),
        timeout=60,
    )
    events = [decode_event(line) for line in done.stdout.splitlines()]
    assert done.returncode == 2
    assert [e.error for e in events] == ["invalid_job"]


def _start_long_job(video, model_dir, output_dir):
    proc = subprocess.Popen(
        WORKER,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=worker_env(),
    )
    spec = make_spec(video, output_dir, model_dir, segment_seconds=1)
    proc.stdin.write(encode_job(spec).encode())
    proc.stdin.flush()
    # Wait until the model is judging segments, so the stop lands mid-run.
    for line in proc.stdout:
        event = decode_event(line)
        if event.type == "progress" and event.step.startswith("Analyzing segment"):
            return proc
    raise AssertionError(f"worker ended before analysing: exit {proc.wait()}")


# Bounds for liveness only, not speed claims: a worker that never stops fails instead of hanging.
STOP_BOUND = 10


def test_sigterm_mid_run_ends_the_worker_without_complete_looking_artifacts(
    make_video, tiny_model_dir, tmp_path
):
    video = make_video("long.mp4", seconds=40.0)
    out = tmp_path / "out"
    proc = _start_long_job(video, tiny_model_dir, out)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_BOUND) == 128 + signal.SIGTERM
    remaining = proc.stdout.read().decode().splitlines()
    assert not any(decode_event(line).type in ("result", "error") for line in remaining)
    assert not (out / "reel.mp4").exists()
    proc.stdin.close()
    proc.stdout.close()


def test_worker_stops_when_its_parent_closes_stdin(make_video, tiny_model_dir, tmp_path):
    """stdin reaching end of file means the server is gone: no orphan keeps working."""
    video = make_video("long.mp4", seconds=40.0)
    proc = _start_long_job(video, tiny_model_dir, tmp_path / "out")
    proc.stdin.close()
    assert proc.wait(timeout=STOP_BOUND) == 128 + signal.SIGTERM
    proc.stdout.close()


def test_stray_prints_never_reach_the_event_channel():
    """Library prints (transformers prints on stdout) are diverted to stderr."""
    script = (
        "from inference_worker.channel import EventChannel\n"
        "import os, sys\n"
        "from protocol import Log, LogLevel\n"
        "channel = EventChannel.claim_stdout()\n"
        "print('a library notice')\n"
        "os.write(1, b'raw fd write\\n')\n"
        "channel.emit(Log(LogLevel.INFO, 'hello'))\n"
    )
    done = subprocess.run(
        [WORKER[0], "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"type": "log", "level": "info", "message": "hello"}
    ]
    assert "a library notice" in done.stderr and "raw fd write" in done.stderr


NATIVE_CALL_STARTED = 1.0


def _start_stuck_worker(part, *flags):
    """The stuck_in_native_call fixture, once it is inside its long native call."""
    proc = subprocess.Popen(
        [WORKER[0], str(STUCK_IN_NATIVE_CALL), str(part), *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=worker_env(),
    )
    assert proc.stdout.readline() == b"ready\n"
    # "ready" comes just before the product starts; it takes minutes, so a moment later
    # the main thread is surely inside it (a signal before would reach Python directly).
    time.sleep(NATIVE_CALL_STARTED)
    return proc


def test_sigterm_ends_a_worker_stuck_in_a_native_call_and_removes_its_unfinished_file(
    tmp_path,
):
    """The native call lasts minutes; the watchdog, armed at the C level, does not wait for it."""
    part = tmp_path / ".reel.mp4.part"
    proc = _start_stuck_worker(part)
    try:
        assert part.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOP_BOUND) == 128 + signal.SIGTERM
        assert proc.stdout.read() == b""  # the native call never returned
        assert not part.exists()
    finally:
        proc.kill()
        proc.stdin.close()
        proc.stdout.close()


def test_worker_whose_server_dies_during_a_native_call_stops_at_once(tmp_path):
    """A warm worker loading its model watches stdin already: its end stops the load."""
    proc = _start_stuck_worker(tmp_path / "part", "--watch-stdin")
    try:
        proc.stdin.close()
        assert proc.wait(timeout=STOP_BOUND) == 128 + signal.SIGTERM
        assert proc.stdout.read() == b""
    finally:
        proc.kill()
        proc.stdout.close()


def test_a_cold_worker_whose_stdin_closes_before_any_job_has_nothing_to_do():
    done = subprocess.run(
        WORKER,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""
