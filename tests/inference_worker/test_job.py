"""`run_job` in process with the tiny real SmolVLM2: what a job computes once, and reuses."""

from __future__ import annotations

import uuid

import pytest

from inference_worker import artifacts, job
from inference_worker.job import ModelSlot, run_job
from inference_worker.judging import BATCH_ENV
from inference_worker.model import load_model
from inference_worker.video import probe
from protocol import AnalysisType, JobSpec, Log, Partial, Progress, Result, decode_results


@pytest.fixture(scope="module")
def steered_slot(steered_model_dir) -> ModelSlot:
    """The steered tiny model (every segment significant), loaded once for the module."""
    slot = ModelSlot()
    slot.get(str(steered_model_dir))
    return slot


def _spec(video, output_dir, model_dir, video_info=None, **params) -> JobSpec:
    return JobSpec(
        session_id=str(uuid.uuid4()),
        analysis_type=params.pop("analysis", AnalysisType.HIGHLIGHTS),
        video_path=str(video),
        output_dir=str(output_dir),
        model=str(model_dir),
        params=params,
        filename="match.mp4",
        video_info=video_info,
    )


def _run(spec, slot):
    events = []
    terminal = run_job(spec, events.append, slot)
    assert isinstance(terminal, Result), terminal
    decode_results(terminal.results, spec.analysis_type)  # the worker keeps the contract
    return terminal, [event.message for event in events if isinstance(event, Log)]


def test_a_job_trusts_the_probe_in_its_spec_and_never_probes_again(
    sample_video, steered_model_dir, steered_slot, tmp_path, monkeypatch
):
    info = probe(sample_video, "match.mp4")

    def no_probe(*args, **kwargs):
        raise AssertionError("probed although the spec carried the probe")

    monkeypatch.setattr(job, "probe", no_probe)
    monkeypatch.setattr(artifacts, "probe", no_probe)
    spec = _spec(sample_video, tmp_path, steered_model_dir, info, segment_seconds=4)

    result, _ = _run(spec, steered_slot)

    assert decode_results(result.results).video == info.public()
    assert result.results["reel"] is not None and (tmp_path / "reel.mp4").exists()


def test_without_a_probe_in_its_spec_a_job_probes_once(
    sample_video, steered_model_dir, steered_slot, tmp_path, monkeypatch
):
    """The reel writer uses the job's probe instead of its own."""
    calls = []

    def counting_probe(*args, **kwargs):
        calls.append(args)
        return probe(*args, **kwargs)

    monkeypatch.setattr(job, "probe", counting_probe)
    monkeypatch.setattr(artifacts, "probe", counting_probe)

    result, _ = _run(
        _spec(sample_video, tmp_path, steered_model_dir, segment_seconds=4), steered_slot
    )

    assert result.results["reel"] is not None
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("segment_seconds", "frames"),
    # 12 s: 3 segments of 4 frames, the overview's 8 among them; 6 s: 8 frames in all.
    [(4, 12), (3, 16), (6, 8)],
)
def test_a_highlights_job_runs_each_frame_through_the_vision_tower_once(
    sample_video, tiny_model_dir, tmp_path, segment_seconds, frames
):
    """Before, the 8 overview frames were extra frames: 20, 24 and 16 passes."""
    slot = ModelSlot()
    model = slot.get(str(tiny_model_dir))
    spec = _spec(sample_video, tmp_path, tiny_model_dir, segment_seconds=segment_seconds)

    _, logs = _run(spec, slot)

    assert model.frames_encoded == frames
    assert f"{frames} frames through the vision tower" in logs


def test_a_job_logs_its_model_calls_and_tokens(sample_video, tiny_model_dir, tmp_path):
    slot = ModelSlot()
    model = slot.get(str(tiny_model_dir))
    _, logs = _run(_spec(sample_video, tmp_path, tiny_model_dir, segment_seconds=4), slot)

    totals = model.totals  # the model ran only this job
    assert totals.calls > 0 and totals.prompt_tokens > 0
    assert (
        f"{totals.calls} model calls, {totals.prompt_tokens} prompt tokens, "
        f"{totals.generation_tokens} tokens generated"
    ) in logs


def test_the_model_ready_log_says_how_the_model_computes(sample_video, tiny_model_dir, tmp_path):
    slot = ModelSlot(load_model)
    spec = _spec(sample_video, tmp_path, tiny_model_dir, analysis=AnalysisType.WORKOUT)

    _, logs = _run(spec, slot)

    ready = next(message for message in logs if "ready in" in message)
    assert "CPU, float32 weights as shipped; vision encoder and text model in numpy" in ready
    assert "; BLAS: " in ready


def _events(spec, slot):
    events = []
    terminal = run_job(spec, events.append, slot)
    assert isinstance(terminal, Result), terminal
    return terminal.results, events


@pytest.mark.parametrize("analysis", [AnalysisType.HIGHLIGHTS, AnalysisType.WORKOUT])
def test_a_batched_job_gives_the_one_at_a_time_results_and_events(
    sample_video, tiny_model_dir, tmp_path, monkeypatch, analysis
):
    """The real model path: 4 segments of 3 s judged 3 per call, then one at a time."""
    slot = ModelSlot()
    runs = {}
    for size in ("3", "1"):
        monkeypatch.setenv(BATCH_ENV, size)
        spec = _spec(
            sample_video, tmp_path / size, tiny_model_dir, analysis=analysis, segment_seconds=3
        )
        runs[size] = _events(spec, slot)

    (batched, batched_events), (single, single_events) = runs["3"], runs["1"]
    assert {**batched, "processing_time_seconds": 0} == {**single, "processing_time_seconds": 0}
    reported = (Progress, Partial)
    assert [e for e in batched_events if isinstance(e, reported)] == [
        e for e in single_events if isinstance(e, reported)
    ]
    analysing = [e.step for e in single_events if isinstance(e, Progress)]
    assert "Analyzing segment 4/4" in analysing
    logs = [e.message for e in batched_events if isinstance(e, Log)]
    assert f"segments judged up to 3 per model call (batched) ({BATCH_ENV}=3)" in logs
    logs = [e.message for e in single_events if isinstance(e, Log)]
    assert f"segments judged one at a time ({BATCH_ENV}=1)" in logs


def test_a_cpu_job_judges_one_segment_at_a_time_by_default(
    sample_video, tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv(BATCH_ENV, raising=False)
    spec = _spec(sample_video, tmp_path, tiny_model_dir, analysis=AnalysisType.WORKOUT)

    _, logs = _run(spec, ModelSlot())

    assert any(message.startswith("segments judged one at a time (CPU") for message in logs)
