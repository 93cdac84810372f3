"""`judged`: segments put to the model one at a time or in batches, and when to batch."""

from __future__ import annotations

import pytest

from inference_worker.judging import (
    BATCH_ENV,
    GPU_BATCH,
    Batching,
    describe,
    judged,
    segments_per_call,
)
from tests.inference_worker.scripted import ScriptedModel, segment_frames


def _run(batch_size, segments=5, pulls=None):
    """Judge `segments` 10-s segments; the shared log of pulls, calls, turns and yields."""
    events = [] if pulls is None else pulls
    model = ScriptedModel(respond=lambda prompt: f"reply to {prompt}", events=events)
    batching = Batching(model.batch, batch_size) if batch_size > 1 else None
    results = []
    for item, prompt, reply in judged(
        model,
        batching,
        segment_frames(10.0 * segments, pulls=events),
        lambda item: f"segment {item.segment.index}",
        7,
        lambda number: events.append(f"turn {number}"),
    ):
        events.append(f"yield {item.segment.index}")
        results.append((item.segment.index, prompt, reply))
    return results, model, events


def test_batched_replies_are_the_one_at_a_time_replies_in_order():
    one_at_a_time, _, _ = _run(1)
    batched, _, _ = _run(2)
    expected = [(i, f"segment {i}", f"reply to segment {i}") for i in range(5)]
    assert batched == one_at_a_time == expected


def test_segments_go_to_the_model_in_batches_of_the_size_and_a_last_single_one_alone():
    _, model, _ = _run(2)
    assert [call.rows for call in model.calls] == [2, 2, 2, 2, 1]
    assert {call.max_tokens for call in model.calls} == {7}
    assert all(call.frame_count == 4 for call in model.calls)


def test_each_segment_has_its_turn_just_before_its_result_in_both_modes():
    _, _, one_at_a_time = _run(1, segments=3)
    _, _, batched = _run(3, segments=3)
    turns = ["turn 1", "yield 0", "turn 2", "yield 1", "turn 3", "yield 2"]
    assert [e for e in one_at_a_time if e.startswith(("turn", "yield"))] == turns
    assert [e for e in batched if e.startswith(("turn", "yield"))] == turns
    # Batched: the batch is pulled, segment 1's turn starts, then the one call for all three.
    assert batched == ["pull 0", "pull 1", "pull 2", "turn 1", "generate batch of 3", *turns[1:]]
    assert one_at_a_time[:4] == ["pull 0", "turn 1", "generate", "yield 0"]


def test_no_segments_no_calls():
    results, model, events = _run(4, segments=0)
    assert results == [] and model.calls == [] and events == []


@pytest.mark.parametrize(
    ("on_gpu", "setting", "size"),
    [(True, None, GPU_BATCH), (False, None, 1), (True, "1", 1), (False, "3", 3)],
)
def test_batch_size_follows_the_device_unless_the_setting_says(monkeypatch, on_gpu, setting, size):
    if setting is None:
        monkeypatch.delenv(BATCH_ENV, raising=False)
    else:
        monkeypatch.setenv(BATCH_ENV, setting)
    chosen, why = segments_per_call(on_gpu)
    assert chosen == size
    assert (f"{BATCH_ENV}={setting}" in why) == (setting is not None)


@pytest.mark.parametrize("setting", ["0", "two", "-2", "1.5"])
def test_an_unusable_setting_is_ignored_and_said_so(monkeypatch, setting):
    monkeypatch.setenv(BATCH_ENV, setting)
    chosen, why = segments_per_call(on_gpu=True)
    assert chosen == GPU_BATCH
    assert f"{BATCH_ENV}={setting!r} ignored" in why


def test_the_log_line_says_which_path_and_why():
    assert describe(1, "CPU") == "segments judged one at a time (CPU)"
    assert describe(4, "GPU") == "segments judged up to 4 per model call (batched) (GPU)"
