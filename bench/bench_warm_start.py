"""Start latency: from an upload's 202 to the job's first real progress, warm vs cold workers.

"First real progress" is the worker reporting that its model is loaded (progress 0.05,
"Model loaded"): from there on the job is analysing. A cold job first starts Python,
imports mlx_vlm and loads the model; a warm worker did that before the upload arrived.
The server runs in this process (create_app on a loopback port) with the real worker and
the tiny model; the latency is read off the job's event stream. The tiny model loads in
milliseconds, so the gain here is mostly the Python start and imports; with the real
500M model the load adds more on top of the cold figure.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.common import row
from inference_worker.tiny_model import build_tiny_model
from server.app import create_app
from server.config import Config
from server.web import app_keys as keys
from tests.media import write_video

JOBS = 5
LOADED = 0.05  # the worker's progress once the model is loaded
# Long enough for a replacement warm worker to have imported and loaded the tiny model.
SETTLE_SECONDS = 4.0


async def first_progress_latency(http: aiohttp.ClientSession, base: str, video: bytes) -> float:
    """Seconds from the upload's 202 to a status event with the model loaded."""
    form = aiohttp.FormData()
    form.add_field("analysis_type", "highlights")
    form.add_field("file", video, filename="clip.mp4", content_type="video/mp4")
    async with http.post(f"{base}/api/v1/video/upload", data=form) as response:
        assert response.status == 202, await response.text()
        accepted = time.perf_counter()
        session_id = (await response.json())["sessionId"]
    async with http.get(f"{base}/api/v1/video/events/{session_id}") as stream:
        async for raw in stream.content:
            line = raw.decode().strip()
            if line.startswith("data:") and json.loads(line[5:]).get("progress", 0) >= LOADED:
                latency = time.perf_counter() - accepted
                break
    async with http.post(f"{base}/api/v1/video/cancel/{session_id}"):
        pass
    return latency


async def measure(warm_workers: int, model_dir: Path, video: bytes, data_dir: Path) -> list[float]:
    config = Config(port=0, data_dir=data_dir, model=str(model_dir), warm_workers=warm_workers)
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    latencies = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(JOBS):
                await asyncio.sleep(SETTLE_SECONDS)
                if warm_workers:
                    assert app[keys.RUNNER]._warm.idle_count == warm_workers
                latencies.append(
                    await first_progress_latency(http, f"http://127.0.0.1:{port}", video)
                )
    finally:
        await runner.cleanup()
    return latencies


def run(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        tmp_path = Path(tmp)
        model_dir = build_tiny_model(tmp_path / "model")
        video = write_video(tmp_path / "clip.mp4", seconds=10.0, width=320, height=240).read_bytes()
        cold = asyncio.run(measure(0, model_dir, video, tmp_path / "cold"))
        warm = asyncio.run(measure(1, model_dir, video, tmp_path / "warm"))
    return [
        row(
            "warm start",
            f"upload 202 -> model loaded in the job's worker, median of {JOBS}, WARM_WORKERS=1",
            statistics.median(warm),
            "WARM_WORKERS=0 (cold start)",
            statistics.median(cold),
            "well under 1x",
        )
    ]


if __name__ == "__main__":
    for result in run():
        print(result)
