"""The routes behind the page's timeline: the original video (HTTP Range) and its chapters."""

from __future__ import annotations

import sys

import pytest
import webvtt

from tests.server.http_helpers import V1, finished, start, until_running, upload_id

REAL_WORKER = (sys.executable, "-m", "inference_worker")


async def test_the_upload_is_served_back_with_range_while_running_and_gone_after_cleanup(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path)
    session_id = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(client, session_id)
    url = f"{V1}/results/{session_id}/video"
    data = sample_video.read_bytes()

    whole = await client.get(url)
    assert whole.status == 200 and whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Accept-Ranges"] == "bytes" and await whole.read() == data
    part = await client.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert await part.read() == data[1000:2000]

    assert (await client.delete(f"{V1}/cleanup/{session_id}")).status == 200
    gone = await client.get(url)
    assert gone.status == 404 and (await gone.json())["code"] == 404


async def test_chapters_answer_like_results_until_the_session_completed(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path)
    session_id = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(client, session_id)
    response = await client.get(f"{V1}/results/{session_id}/chapters.vtt")
    assert response.status == 400
    assert (await response.json())["error"] == "Results not ready"


@pytest.mark.slow
@pytest.mark.parametrize("analysis", ["highlights", "workout"])
async def test_chapters_of_a_real_run_parse_as_webvtt_and_cover_the_video_without_overlap(
    aiohttp_client, tmp_path, sample_video, tiny_model_dir, analysis
):
    client = await start(
        aiohttp_client, tmp_path, worker_command=REAL_WORKER, model=str(tiny_model_dir)
    )
    session_id = await upload_id(
        client, sample_video, analysis_type=analysis, params='{"segment_seconds": 3}'
    )
    await finished(client, session_id)
    results = (await (await client.get(f"{V1}/results/{session_id}")).json())["results"]
    response = await client.get(f"{V1}/results/{session_id}/chapters.vtt")
    assert response.status == 200
    assert response.content_type == "text/vtt" and response.charset == "utf-8"

    cues = webvtt.from_string(await response.text(), strict=True).captions
    spans = [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in cues]
    segments = results["timeline" if analysis == "highlights" else "segments"]
    assert spans[0][0] == 0
    assert spans[-1][1] == round(segments[-1]["end"] * 1000)
    assert segments[-1]["end"] == pytest.approx(results["video"]["duration_seconds"], abs=0.2)
    assert all(start < end for start, end in spans)
    assert all(before[1] == after[0] for before, after in zip(spans, spans[1:], strict=False))
    # Merged where neighbours say the same: no two touching chapters share a title.
    texts = [cue.text for cue in cues]
    assert all(before != after for before, after in zip(texts, texts[1:], strict=False))
    assert 1 <= len(cues) <= len(segments)
