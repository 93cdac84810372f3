"""The live page at `GET /`: served to browsers only, and driven end to end in Chromium.

The browser tests run Debian's headless Chromium (or $CHROMIUM) through Playwright against
the real app on a loopback port, whose jobs run in the real worker with the tiny model (the
steered one answers "8", so highlights, thumbnails and a reel are made). A missing browser
fails these tests with the command that installs it: they are part of `make test`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from server.version import SERVICE_NAME
from tests.media import write_text_file
from tests.server.http_helpers import HTTP_WORKER, V1, start

REAL_WORKER = (sys.executable, "-m", "inference_worker")
# $CHROMIUM, else the system's Chromium (`make test` installs Debian's); on macOS, where
# `make test` has Playwright download its own browser, None selects that one.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium")
# As root and on a closed network: no sandbox (it needs a user namespace), and nothing
# that phones home (each refused connection would only slow the start down).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
# A page step waits this long at most; the tiny model's jobs take a few seconds.
STEP_TIMEOUT_MS = 30_000
# Every test on each backend: SQLite and memory, then Redis.
pytestmark = pytest.mark.usefixtures("backend")


async def test_a_browser_gets_the_page(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    response = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.headers["Vary"] == "Accept"
    assert "<title>SmolVLM2 video analysis</title>" in await response.text()


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "text/html;q=0.5, application/json", "text/*;q=0, */*"],
)
async def test_api_clients_keep_the_json_index(aiohttp_client, tmp_path, accept):
    """Only a client ranking text/html above JSON gets the page; a tie keeps API.md's JSON."""
    client = await start(aiohttp_client, tmp_path)
    response = await client.get("/", headers={"Accept": accept} if accept else {})
    assert response.status == 200 and response.content_type == "application/json"
    assert response.headers["Vary"] == "Accept"
    assert (await response.json())["service"] == SERVICE_NAME


async def test_the_page_needs_no_api_key(aiohttp_client, tmp_path):
    """With API_KEY set the page still loads: the visitor types the key into it."""
    client = await start(aiohttp_client, tmp_path, api_key="s3cret")
    response = await client.get("/", headers={"Accept": "text/html"})
    assert response.status == 200 and response.content_type == "text/html"


# ---- in the browser ---------------------------------------------------------------------


@pytest.fixture
def chromium() -> str | None:
    """The browser's path (None: Playwright's own); a clear failure (not a skip) if missing."""
    if CHROMIUM is None and sys.platform != "darwin":
        pytest.fail(
            "Chromium is needed for the page tests and is not on PATH: `make test` installs "
            "it (apt-get install chromium), or point $CHROMIUM at a Chromium or Chrome"
        )
    return CHROMIUM


@pytest.fixture
async def browser(tmp_path, chromium):
    """A fresh Chromium context (new empty profile in tmp_path), closed after the test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        context.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            yield context
        finally:
            await context.close()


async def open_page(aiohttp_client, tmp_path, browser, model: Path, **overrides):
    """The app (with the real worker unless `overrides` name another) on a loopback port,
    and the page open in the browser."""
    client = await start(
        aiohttp_client,
        tmp_path,
        like_run_app=True,
        **{"worker_command": REAL_WORKER, "model": str(model), **overrides},
    )
    page = await browser.new_page()
    # Items shown while the job runs (no thumbnail yet), recorded as they are added.
    await page.add_init_script(
        """
        window.liveItems = [];
        document.addEventListener("DOMContentLoaded", () => {
          new MutationObserver((changes) => {
            for (const change of changes) for (const node of change.addedNodes) {
              if (node.tagName === "LI" && !node.querySelector("img")) {
                window.liveItems.push(node.textContent);
              }
            }
          }).observe(document.getElementById("items"), { childList: true });
        });
        """
    )
    await page.goto(str(client.make_url("/")))
    return client, page


async def start_job(page, video: Path, segment_seconds: int) -> None:
    await page.get_by_label("Video file").set_input_files(video)
    await page.get_by_role("radio", name="Highlights").check()
    await page.get_by_label("Segment length").fill(str(segment_seconds))
    await page.get_by_role("button", name="Analyze video").click()


async def finished_with_thumbnails_and_reel(page) -> None:
    await page.wait_for_function(
        """() => {
          const images = [...document.querySelectorAll("#items img")];
          return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
        }"""
    )
    await page.wait_for_function(
        """() => {
          const reel = document.getElementById("reel");
          return !reel.hidden && reel.readyState >= 1 && reel.duration > 0;
        }"""
    )


async def download(page, label: str) -> tuple[str, str]:
    """Click the page's download link `label`: the file's suggested name and its text."""
    async with page.expect_download() as started:
        await page.locator("#download-list").get_by_role("link", name=label).click()
    done = await started.value
    path = Path(await done.path())
    return done.suggested_filename, await asyncio.to_thread(path.read_text)


async def test_a_highlights_job_runs_live_to_thumbnails_and_a_playing_reel(
    aiohttp_client, tmp_path, browser, sample_video, steered_model_dir
):
    _, page = await open_page(aiohttp_client, tmp_path, browser, steered_model_dir)

    await start_job(page, sample_video, segment_seconds=3)

    await page.wait_for_function("document.getElementById('analysis-progress').value === 100")
    await finished_with_thumbnails_and_reel(page)
    assert await page.locator("#status").text_content() == "Done."
    assert await page.locator("#upload-progress").evaluate("bar => bar.value") == 100
    assert await page.locator("#analysis-percent").text_content() == "100%"
    live = await page.evaluate("window.liveItems")
    assert live and all("significance 8" in item for item in live)
    assert await page.locator("#items li").count() == 1
    assert "1 highlight in sample.mp4" in await page.locator("#summary").text_content()
    assert await page.get_by_role("button", name="Analyze video").is_enabled()
    assert not await page.locator("#error").is_visible()


async def test_cancel_stops_a_running_job_and_says_so(
    aiohttp_client, tmp_path, browser, make_video, tiny_model_dir
):
    client, page = await open_page(aiohttp_client, tmp_path, browser, tiny_model_dir)

    await start_job(page, make_video("long.mp4", seconds=60.0), segment_seconds=1)
    await page.locator("#status", has_text="Analyzing segment").wait_for()
    session_id = await page.locator("#session-id").text_content()
    await page.get_by_role("button", name="Cancel", exact=True).click()

    await page.locator("#status", has_text="Analysis cancelled.").wait_for()
    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    assert status["status"] == "cancelled"
    assert not await page.get_by_role("button", name="Cancel", exact=True).is_visible()
    assert await page.get_by_role("button", name="Analyze video").is_enabled()
    assert 0 < await page.locator("#analysis-progress").evaluate("bar => bar.value") < 100


async def test_a_refused_upload_shows_the_api_error_and_the_form_stays_usable(
    aiohttp_client, tmp_path, browser, tiny_model_dir
):
    _, page = await open_page(aiohttp_client, tmp_path, browser, tiny_model_dir)

    await start_job(page, write_text_file(tmp_path / "notes.mp4"), segment_seconds=10)

    error = page.get_by_role("alert")
    await error.filter(has_text="Unsupported media type: ").wait_for()
    assert await page.get_by_role("button", name="Analyze video").is_enabled()


async def test_with_an_api_key_the_page_sends_it_everywhere(
    aiohttp_client, tmp_path, browser, sample_video, steered_model_dir
):
    """Upload and results (Bearer header), events (access_token query), media (fetched as blobs)."""
    _, page = await open_page(
        aiohttp_client, tmp_path, browser, steered_model_dir, api_key="s3cret"
    )

    await start_job(page, sample_video, segment_seconds=6)
    await page.get_by_role("alert").filter(has_text="Unauthorized: ").wait_for()

    await page.get_by_text("API key").first.click()  # opens the <details>
    await page.get_by_label("API key").fill("s3cret")
    await page.get_by_role("button", name="Analyze video").click()
    await finished_with_thumbnails_and_reel(page)
    assert await page.locator("#status").text_content() == "Done."
    assert not await page.get_by_role("alert").is_visible()

    # The downloads were fetched with the key too; a 10 fps video has no EDL, and says why.
    await page.locator("#downloads").wait_for()
    downloads = page.locator("#download-list")
    assert await downloads.get_by_role("link").all_text_contents() == [
        "OpenTimelineIO (.otio)",
        "Final Cut Pro XML (.fcpxml)",
        "Chapters (WebVTT)",
    ]
    refused = await downloads.locator(".unavailable").all_text_contents()
    assert len(refused) == 1 and refused[0].startswith("CMX 3600 EDL (.edl): not available")
    assert "SMPTE timecode" in refused[0] and "10 fps" in refused[0]
    name, text = await download(page, "OpenTimelineIO (.otio)")
    assert name == "sample-highlights.otio" and json.loads(text)["OTIO_SCHEMA"].startswith(
        "Timeline."
    )
    name, text = await download(page, "Chapters (WebVTT)")
    assert name == "sample.chapters.vtt" and text.startswith("WEBVTT")


async def test_a_finished_highlights_job_offers_the_edl_where_the_rate_allows_and_an_icon(
    aiohttp_client, tmp_path, browser, make_video, tiny_model_dir
):
    """The fixture worker's highlights (one, no judged segments) of a 25 fps video: every
    editor export, and the chapters listed with the reason they are missing."""
    _, page = await open_page(
        aiohttp_client, tmp_path, browser, tiny_model_dir, worker_command=HTTP_WORKER
    )
    failed: list[str] = []
    page.on("response", lambda response: response.status >= 400 and failed.append(response.url))

    await start_job(page, make_video("edit.mp4", seconds=4.0, fps=25), segment_seconds=2)
    await page.locator("#status", has_text="Done.").wait_for()
    await page.locator("#downloads").wait_for()

    downloads = page.locator("#download-list")
    assert await downloads.get_by_role("link").all_text_contents() == [
        "OpenTimelineIO (.otio)",
        "CMX 3600 EDL (.edl)",
        "Final Cut Pro XML (.fcpxml)",
    ]
    missing = await downloads.locator(".unavailable").all_text_contents()
    assert missing == ["Chapters (WebVTT): not availableThese results have no judged segments"]
    name, text = await download(page, "CMX 3600 EDL (.edl)")
    assert name == "edit-highlights.edl" and text.startswith("TITLE:")
    name, text = await download(page, "Final Cut Pro XML (.fcpxml)")
    assert name == "edit-highlights.fcpxml" and "<fcpxml" in text

    icon = await page.evaluate(
        """async () => {
          const link = document.querySelector("link[rel=icon]");
          const response = await fetch(link.href);
          const type = response.headers.get("Content-Type");
          return [new URL(link.href).pathname, response.status, type];
        }"""
    )
    assert icon == ["/favicon.ico", 200, "image/svg+xml"]
    # No 404 for the icon: the only refused requests are for the chapters this session
    # lacks (the download list's and the player's chapter track's).
    assert {url.rsplit("/", 1)[1] for url in failed} == {"chapters.vtt"}
    await page.screenshot(path="/tmp/page-downloads.png", full_page=True)


# ---- the timeline, its chapters and earlier sessions -------------------------------------

# Bars on the chart, sampled each time the chart is redrawn, with the status line then.
RECORD_CHART = """
window.chartHistory = [];
document.addEventListener("DOMContentLoaded", () => {
  const chart = document.getElementById("chart");
  new MutationObserver(() => {
    window.chartHistory.push({
      bars: chart.querySelectorAll(".seg").length,
      status: document.getElementById("status").textContent,
    });
  }).observe(chart, { childList: true });
});
"""


async def test_the_chart_grows_live_a_click_seeks_the_video_and_chapters_load(
    aiohttp_client, tmp_path, browser, sample_video, steered_model_dir
):
    client, page = await open_page(aiohttp_client, tmp_path, browser, steered_model_dir)
    await page.add_init_script(RECORD_CHART)
    await page.reload()

    await start_job(page, sample_video, segment_seconds=2)  # 12 s: six judged segments
    await page.locator("#status", has_text="Done.").wait_for()

    history = await page.evaluate("window.chartHistory")
    bars = [entry["bars"] for entry in history]
    assert bars == sorted(bars) and bars[-1] == 6
    assert any(0 < entry["bars"] < 6 and entry["status"] != "Done." for entry in history)
    assert await page.locator("#chart .mark").count() == 1  # the one kept highlight, 0-12 s
    assert await page.locator("#chart .seg.kept").count() == 6
    assert "6 segments judged" in await page.locator("#legend").text_content()

    await page.locator("#chart .seg").nth(3).click()
    await page.wait_for_function(
        "Math.abs(document.getElementById('player').currentTime - 6) < 0.5"
    )
    await page.wait_for_function(
        """() => {
          const track = document.querySelector("#player track");
          return track && track.kind === "chapters" && track.track.cues?.length > 0;
        }"""
    )
    cues = await page.evaluate(
        """[...document.querySelector("#player track").track.cues].map(
             (cue) => [cue.startTime, cue.endTime, cue.text])"""
    )
    assert cues[0][0] == 0 and abs(cues[-1][1] - 12.0) < 0.2
    assert all("significance 8/10" in text for _, _, text in cues)
    session_id = await page.locator("#session-id").text_content()
    chapters = await client.get(f"{V1}/results/{session_id}/chapters.vtt")
    assert chapters.status == 200
    await page.screenshot(path="/tmp/timeline-highlights.png", full_page=True)


async def test_earlier_sessions_are_listed_newest_first_and_reopen(
    aiohttp_client, tmp_path, browser, sample_video, steered_model_dir
):
    _, page = await open_page(aiohttp_client, tmp_path, browser, steered_model_dir)
    for segment_seconds in (6, 4):
        await start_job(page, sample_video, segment_seconds=segment_seconds)
        await page.locator("#status", has_text="Done.").wait_for()
    newest = await page.locator("#session-id").text_content()

    later = await browser.new_page()  # a visitor coming back
    await later.goto(page.url)
    entries = later.locator("#history-list li")
    await entries.nth(1).wait_for()
    assert await entries.count() == 2
    assert newest in await entries.first.text_content()
    assert all("completed" in text for text in await entries.all_text_contents())

    await entries.nth(1).get_by_role("button").click()  # the older one: 6-s segments
    await later.locator("#status", has_text="Done.").wait_for()
    assert await later.locator("#chart .seg").count() == 2
    assert await later.locator("#chart .mark").count() == 1
    assert "1 highlight in sample.mp4" in await later.locator("#summary").text_content()
    await later.wait_for_function("document.querySelector('#player track')?.track.cues?.length > 0")
    await later.screenshot(path="/tmp/timeline-history.png", full_page=True)


async def test_a_workout_draws_a_band_per_exercise_and_reps_as_bars(
    aiohttp_client, tmp_path, browser, sample_video, tiny_model_dir
):
    """The fixture worker's workout: squats, 3 reps, from 0 to 2 s."""
    _, page = await open_page(
        aiohttp_client, tmp_path, browser, tiny_model_dir, worker_command=HTTP_WORKER
    )
    await page.get_by_label("Video file").set_input_files(sample_video)
    await page.get_by_role("radio", name="Workout").check()
    await page.get_by_role("button", name="Analyze video").click()
    await page.locator("#status", has_text="Done.").wait_for()

    band = page.locator("#chart .band.exercise")
    assert await band.count() == 1
    assert await band.get_attribute("aria-label") == "00:00–00:02: squat, 3 reps"
    assert await page.locator("#chart .reps").all_text_contents() == ["squat3 reps · 0:02"]
    # From elsewhere in the video: where the player seeks to is recorded as it lands,
    # since it then plays on (a poll of currentTime could come too late to see 0).
    await page.evaluate(
        """() => new Promise((landed) => {
          const player = document.getElementById("player");
          player.addEventListener("seeked", landed, { once: true });
          player.currentTime = 5;
        })"""
    )
    await page.evaluate(
        """() => {
          window.seeks = [];
          const player = document.getElementById("player");
          player.addEventListener("seeked", () => window.seeks.push(player.currentTime));
        }"""
    )
    await band.click()
    await page.wait_for_function("window.seeks.some((time) => time < 0.5)")
    await page.screenshot(path="/tmp/timeline-workout.png", full_page=True)
