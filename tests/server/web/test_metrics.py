"""GET /metrics: Prometheus text format, one registry per app, numbers that match what happened."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from tests.media import write_text_file
from tests.server.http_helpers import (
    V1,
    finished,
    make_config,
    start,
    until_running,
    upload,
    upload_id,
)

KEY = "metrics-key"


async def scrape(client, **headers: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels), parsed by prometheus_client itself."""
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


def sessions_by_status(samples) -> dict[str, float]:
    return {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "smolvlm_sessions"
    }


async def test_sessions_by_status_queue_and_running_are_read_at_scrape_time(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path, max_concurrent_jobs=1)
    empty = await scrape(client)
    assert set(sessions_by_status(empty).values()) == {0.0}  # every status, even at zero
    assert empty[("smolvlm_queue_depth", ())] == 0 and empty[("smolvlm_running_jobs", ())] == 0

    await upload_id(client, sample_video)  # uploaded
    running = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(client, running)
    await upload_id(client, sample_video, "hang-2.mp4", analysis_type="workout")  # queued
    samples = await scrape(client)
    counts = sessions_by_status(samples)
    assert counts["uploaded"] == 1 and counts["processing"] == 1 and counts["pending"] == 1
    assert counts["completed"] == counts["failed"] == counts["cancelled"] == 0
    assert samples[("smolvlm_queue_depth", ())] == 1
    assert samples[("smolvlm_running_jobs", ())] == 1


async def test_job_durations_are_observed_by_analysis_type_and_outcome(
    aiohttp_client, tmp_path, sample_video
):
    """Fed by the runner's on_finished hook: completed, failed and cancelled all count."""
    client = await start(aiohttp_client, tmp_path)
    done = await upload_id(client, sample_video, analysis_type="highlights")
    failed = await upload_id(client, sample_video, "fail.mp4", analysis_type="workout")
    cancelled = await upload_id(client, sample_video, "hang.mp4", analysis_type="workout")
    await until_running(client, cancelled)
    assert (await client.post(f"{V1}/cancel/{cancelled}")).status == 200
    for session_id in (done, failed, cancelled):
        await finished(client, session_id)
    samples = await scrape(client)

    def count(analysis_type: str, outcome: str) -> float:
        labels = (("analysis_type", analysis_type), ("outcome", outcome))
        return samples.get(("smolvlm_job_duration_seconds_count", labels), 0.0)

    assert count("highlights", "completed") == 1
    assert count("workout", "failed") == 1
    # The hook runs once the supervisor has stopped the worker, which the cancel awaits.
    assert count("workout", "cancelled") == 1
    assert count("highlights", "failed") == 0
    total = (("analysis_type", "highlights"), ("outcome", "completed"))
    assert samples[("smolvlm_job_duration_seconds_sum", total)] > 0


async def test_upload_bytes_count_every_byte_written_rejected_uploads_included(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path)
    text = write_text_file(tmp_path / "list.mp4")
    await upload_id(client, sample_video)
    assert (await upload(client, text)).status == 415
    samples = await scrape(client)
    expected = sample_video.stat().st_size + text.stat().st_size
    assert samples[("smolvlm_upload_bytes_total", ())] == expected


async def test_two_apps_in_one_process_keep_their_own_registries(
    aiohttp_client, tmp_path, sample_video
):
    """No module-global default registry: a second app neither collides nor shares counts."""
    first = await aiohttp_client(create_app(make_config(tmp_path / "one")))
    second = await aiohttp_client(create_app(make_config(tmp_path / "two")))
    await upload_id(first, sample_video)
    one, two = await scrape(first), await scrape(second)
    assert one[("smolvlm_upload_bytes_total", ())] == sample_video.stat().st_size
    assert two[("smolvlm_upload_bytes_total", ())] == 0
    assert sessions_by_status(one)["uploaded"] == 1 and sessions_by_status(two)["uploaded"] == 0


async def test_metrics_need_the_api_key_when_one_is_set(aiohttp_client, tmp_path):
    """Not one of API.md's open routes: with API_KEY, a scraper sends the bearer token."""
    client = await start(aiohttp_client, tmp_path, api_key=KEY)
    refused = await client.get("/metrics")
    assert refused.status == 401 and (await refused.json())["code"] == 401
    samples = await scrape(client, Authorization=f"Bearer {KEY}")
    assert ("process_resident_memory_bytes", ()) in samples
