"""The service with its files in a bucket (STORAGE_URL), end to end on a real S3 server.

SeaweedFS's `weed` serves S3 on loopback; the app, the probe and the real worker with the
steered tiny SmolVLM2 run as in production. What a node keeps on its own disk is checked
after every step: nothing but a running job's scratch.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import aiohttp
import av
import pytest

from server.storage.opening import storage_problem
from server.storage.paths import DataPaths
from server.web import app_keys
from tests.server.http_helpers import V1, finished, start, upload, video_form
from tests.server.s3_server import S3Server

pytestmark = pytest.mark.slow

REAL_WORKER = (sys.executable, "-m", "inference_worker")


@pytest.fixture
def prefix() -> str:
    return f"e2e-{uuid.uuid4().hex}"


@pytest.fixture
def bucket_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The AWS_* settings of the test's S3 server, as a node's environment has them."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def keys(server: S3Server, prefix: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix + "/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def unfinished_uploads(server: S3Server, prefix: str) -> list[str]:
    listing = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix + "/")
    return [item["Key"] for item in listing.get("Uploads", [])]


def files_on_disk(data_dir: Path) -> list[Path]:
    """Every file under a node's DATA_DIR but its session store."""
    return [
        path
        for path in data_dir.rglob("*")
        if path.is_file() and not path.name.startswith("sessions.db")
    ]


async def bucket_client(aiohttp_client, tmp_path, server, prefix, model_dir=None, **overrides):
    """A test client for an app whose files are under `prefix` of `server`'s bucket."""
    if model_dir is not None:
        overrides.update(worker_command=REAL_WORKER, model=str(model_dir))
    return await start(
        aiohttp_client, tmp_path, storage_url=f"s3://{server.bucket}/{prefix}", **overrides
    )


async def test_a_highlights_job_keeps_every_file_in_the_bucket_and_none_on_the_node(
    aiohttp_client, tmp_path, sample_video, steered_model_dir, bucket_env, prefix
):
    client = await bucket_client(aiohttp_client, tmp_path, bucket_env, prefix, steered_model_dir)
    response = await upload(
        client, sample_video, "match.mp4", analysis_type="highlights",
        params='{"segment_seconds": 4}',
    )  # fmt: skip
    assert response.status == 202, await response.text()
    session_id = (await response.json())["sessionId"]
    assert keys(bucket_env, prefix) == [f"{prefix}/uploads/{session_id}/source.mp4"]
    await finished(client, session_id)

    body = await (await client.get(f"{V1}/results/{session_id}")).json()
    assert body["status"] == "completed", body
    stored = keys(bucket_env, prefix)
    assert f"{prefix}/artifacts/{session_id}/reel.mp4" in stored
    assert f"{prefix}/artifacts/{session_id}/thumbnails/000.jpg" in stored
    assert files_on_disk(tmp_path / "data") == []  # the job's scratch went with it

    reel = await client.get(body["results"]["reel"]["url"])
    assert reel.status == 200 and reel.content_type == "video/mp4"
    reel_bytes = await reel.read()
    (tmp_path / "reel.mp4").write_bytes(reel_bytes)
    with av.open(str(tmp_path / "reel.mp4")) as container:
        assert container.streams.video
    ranged = await client.get(body["results"]["reel"]["url"], headers={"Range": "bytes=10-109"})
    assert ranged.status == 206
    assert ranged.headers["Content-Range"] == f"bytes 10-109/{len(reel_bytes)}"
    assert await ranged.read() == reel_bytes[10:110]
    tail = await client.get(f"{V1}/results/{session_id}/video", headers={"Range": "bytes=-50"})
    assert tail.status == 206 and await tail.read() == sample_video.read_bytes()[-50:]
    past = await client.get(f"{V1}/results/{session_id}/video", headers={"Range": "bytes=9999999-"})
    assert past.status == 416 and past.headers["Content-Range"].startswith("bytes */")
    thumbnail = await client.get(f"{V1}/results/{session_id}/thumbnails/0")
    assert thumbnail.status == 200 and thumbnail.content_type == "image/jpeg"

    assert (await client.delete(f"{V1}/cleanup/{session_id}")).status == 200
    assert keys(bucket_env, prefix) == []


async def test_file_routes_redirect_to_signed_urls_that_serve_ranges(
    aiohttp_client, tmp_path, sample_video, bucket_env, prefix
):
    client = await bucket_client(
        aiohttp_client, tmp_path, bucket_env, prefix, storage_redirect_seconds=60
    )
    response = await upload(client, sample_video, "match.mp4")
    session_id = (await response.json())["sessionId"]
    answer = await client.get(f"{V1}/results/{session_id}/video", allow_redirects=False)
    assert answer.status == 307 and answer.headers["Cache-Control"] == "no-store"
    signed = answer.headers["Location"]
    assert signed.startswith(bucket_env.endpoint_url) and "X-Amz-Signature" in signed
    async with aiohttp.ClientSession() as browser:  # no API key, no AWS keys: the URL is all
        async with browser.get(signed, headers={"Range": "bytes=0-99"}) as ranged:
            assert ranged.status == 206
            assert await ranged.read() == sample_video.read_bytes()[:100]


@pytest.mark.parametrize("content", [b"not a video at all" * 1000, b""])
async def test_a_rejected_upload_leaves_no_object_and_no_unfinished_upload(
    aiohttp_client, tmp_path, bucket_env, prefix, content
):
    client = await bucket_client(aiohttp_client, tmp_path, bucket_env, prefix)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    response = await client.post(f"{V1}/upload", data=video_form(bad, "bad.mp4"))
    assert response.status == 415, await response.text()
    assert keys(bucket_env, prefix) == [] and unfinished_uploads(bucket_env, prefix) == []
    assert files_on_disk(tmp_path / "data") == []


async def test_an_upload_over_the_limit_is_aborted_in_the_bucket(
    aiohttp_client, tmp_path, bucket_env, prefix
):
    """Past the first 8 MiB part, so a multipart upload had begun when the limit struck."""
    client = await bucket_client(aiohttp_client, tmp_path, bucket_env, prefix, max_upload_mb=9)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (9 * 1024 * 1024 + 512 * 1024))
    response = await client.post(f"{V1}/upload", data=video_form(big, "big.mp4"))
    assert response.status == 413, await response.text()
    assert keys(bucket_env, prefix) == [] and unfinished_uploads(bucket_env, prefix) == []


async def test_with_the_store_away_uploads_are_503_and_status_still_answers(
    aiohttp_client, tmp_path, sample_video, bucket_env, prefix
):
    client = await bucket_client(aiohttp_client, tmp_path, bucket_env, prefix)
    kept = (await (await upload(client, sample_video, "a.mp4")).json())["sessionId"]
    bucket_env.kill()
    try:
        refused = await upload(client, sample_video, "b.mp4")
        assert refused.status == 503, await refused.text()
        assert int(refused.headers["Retry-After"]) >= 1
        assert "file store" in (await refused.json())["message"]
        status = await client.get(f"{V1}/status/{kept}")
        assert status.status == 200 and (await status.json())["status"] == "uploaded"
    finally:
        bucket_env.start()
    assert keys(bucket_env, prefix) == [f"{prefix}/uploads/{kept}/source.mp4"]
    assert unfinished_uploads(bucket_env, prefix) == []


async def test_a_node_refuses_to_start_on_a_bucket_it_cannot_use(tmp_path, bucket_env, prefix):
    paths = DataPaths(tmp_path)
    assert await storage_problem(f"s3://{bucket_env.bucket}/{prefix}", paths) is None
    problem = await storage_problem(f"s3://no-such-bucket/{prefix}", paths)
    assert problem is not None and "no-such-bucket" in problem and "\n" not in problem


async def test_an_upload_the_probe_cannot_read_from_the_store_is_a_503_and_leaves_nothing(
    aiohttp_client, tmp_path, sample_video, bucket_env, prefix, monkeypatch
):
    """The store fails the probe's reads (here: its URL names an object that is not there):
    the client is told to try again, not that its video is bad."""
    client = await bucket_client(aiohttp_client, tmp_path, bucket_env, prefix)
    files = client.app[app_keys.FILES]
    signed = files.probe_source

    async def url_of_nothing(location: str) -> str:
        return await signed(location + ".gone")

    monkeypatch.setattr(files, "probe_source", url_of_nothing)
    refused = await upload(client, sample_video, "a.mp4")
    assert refused.status == 503, await refused.text()
    assert int(refused.headers["Retry-After"]) >= 1
    assert keys(bucket_env, prefix) == [] and unfinished_uploads(bucket_env, prefix) == []
