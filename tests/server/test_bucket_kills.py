"""Real nodes with their files in a bucket, killed with SIGKILL at the awkward moments.

Whatever a killed node leaves (an unfinished multipart upload, a job's scratch) is ended
by the sweep or by the node's next start; nothing stays for ever.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
import sys
import uuid
from datetime import timedelta

import aiohttp
import pytest

from server.state.events import EventHub
from server.state.janitor import Janitor
from server.state.models import utcnow
from server.state.sessions import Sessions
from server.state.store import MemoryStore
from server.storage.s3 import S3Files
from tests.server.conftest import FIXTURES
from tests.server.s3_server import S3Server
from tests.server.server_process import ServerProcess

pytestmark = pytest.mark.slow

V1 = "/api/v1/video"
BOUND = 60.0  # against hangs only
HANGING_WORKER = shlex.join([sys.executable, str(FIXTURES / "cluster_worker.py")])
MIB = 1024 * 1024


@pytest.fixture
def bucket_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The AWS_* settings of the test's S3 server, in the environment nodes inherit."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


async def until(condition, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + BOUND
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.1)


def unfinished_uploads(server: S3Server, prefix: str) -> list[str]:
    listing = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix + "/")
    return [item["Key"] for item in listing.get("Uploads", [])]


async def test_a_node_killed_mid_upload_leaves_an_upload_the_sweep_ends(tmp_path, bucket_env):
    prefix = f"kill-{uuid.uuid4().hex}"
    node = ServerProcess(
        tmp_path / "data",
        tmp_path,
        log_path=tmp_path / "node.log",
        storage_url=f"s3://{bucket_env.bucket}/{prefix}",
    )
    held = asyncio.Event()

    async def body():
        """A multipart body that sends 10 MiB of a video, then stalls."""
        yield (
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="long.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n"
        )
        for _ in range(10):
            yield b"\0" * MIB
        await held.wait()

    async with aiohttp.ClientSession() as http:
        try:
            await node.ready(http)
            headers = {"Content-Type": "multipart/form-data; boundary=B"}
            sending = asyncio.ensure_future(
                http.post(f"{node.url}{V1}/upload", data=body(), headers=headers)
            )
            await until(lambda: unfinished_uploads(bucket_env, prefix), "no part was uploaded")
            node.proc.kill()
            node.proc.wait(timeout=BOUND)
            held.set()
            with pytest.raises(aiohttp.ClientError):
                await sending
        finally:
            node.stop()
    assert len(unfinished_uploads(bucket_env, prefix)) == 1

    files = await S3Files(
        bucket_env.bucket,
        prefix,
        endpoint_url=bucket_env.endpoint_url,
        region=bucket_env.region,
        access_key=bucket_env.access_key,
        secret_key=bucket_env.secret_key,
    ).open()
    try:
        sessions = Sessions(MemoryStore(), EventHub(), files, lambda _id: asyncio.sleep(0))
        young = Janitor(sessions, files, timedelta(hours=24), uploading=lambda _id: False)
        assert (await young.sweep()).stale_uploads == 0  # it may be someone's upload yet
        later = Janitor(
            sessions,
            files,
            timedelta(hours=24),
            uploading=lambda _id: False,
            clock=lambda: utcnow() + timedelta(hours=2),
        )
        assert (await later.sweep()).stale_uploads == 1
    finally:
        await files.close()
    assert unfinished_uploads(bucket_env, prefix) == []


async def test_a_node_killed_mid_job_sweeps_its_scratch_at_its_next_start(
    tmp_path, bucket_env, sample_video
):
    prefix = f"kill-{uuid.uuid4().hex}"
    settings = {
        "storage_url": f"s3://{bucket_env.bucket}/{prefix}",
        "worker_command": HANGING_WORKER,
    }
    data_dir = tmp_path / "data"
    scratch = data_dir / "scratch"
    async with aiohttp.ClientSession() as http:
        node = ServerProcess(data_dir, tmp_path, log_path=tmp_path / "node.log", **settings)
        try:
            await node.ready(http)
            form = aiohttp.FormData()
            form.add_field("file", sample_video.read_bytes(), filename="hang.mp4")
            form.add_field("analysis_type", "highlights")
            async with http.post(f"{node.url}{V1}/upload", data=form) as response:
                assert response.status == 202, await response.text()
                session_id = (await response.json())["sessionId"]
            await until(lambda: (scratch / session_id / "source.mp4").is_file(), "no scratch")
            node.proc.kill()
            node.proc.wait(timeout=BOUND)
        finally:
            node.stop()
        again = ServerProcess(data_dir, tmp_path, log_path=tmp_path / "again.log", **settings)
        try:
            await again.ready(http)
            # The restarted node swept the old scratch; the job it queued again starts over.
            assert "left by a previous process" in again.log()
        finally:
            again.stop()


async def test_two_nodes_that_share_only_redis_and_a_bucket_serve_one_job(
    tmp_path, bucket_env, redis_url, sample_video, steered_model_dir
):
    """Upload to an API node, the job runs on a worker node with a DATA_DIR of its own,
    and the API node serves the reel the worker node stored."""
    prefix = f"pair-{uuid.uuid4().hex}"
    shared = {"storage_url": f"s3://{bucket_env.bucket}/{prefix}", "redis_url": redis_url}
    api = ServerProcess(
        tmp_path / "api", steered_model_dir, log_path=tmp_path / "api.log", role="api", **shared
    )
    worker = ServerProcess(
        tmp_path / "worker",
        steered_model_dir,
        log_path=tmp_path / "worker.log",
        role="worker",
        **shared,
    )
    async with aiohttp.ClientSession() as http:
        try:
            await api.ready(http)
            await worker.ready(http)
            form = aiohttp.FormData()
            form.add_field("file", sample_video.read_bytes(), filename="match.mp4")
            form.add_field("analysis_type", "highlights")
            form.add_field("params", '{"segment_seconds": 4}')
            async with http.post(f"{api.url}{V1}/upload", data=form) as response:
                assert response.status == 202, await response.text()
                session_id = (await response.json())["sessionId"]
            deadline = asyncio.get_running_loop().time() + BOUND
            while True:
                async with http.get(f"{api.url}{V1}/status/{session_id}") as response:
                    status = await response.json()
                if status["status"] in ("completed", "failed", "cancelled"):
                    break
                assert asyncio.get_running_loop().time() < deadline, status
                await asyncio.sleep(0.1)
            assert status["status"] == "completed", status
            async with http.get(f"{api.url}{V1}/results/{session_id}/reel") as reel:
                assert reel.status == 200 and reel.content_type == "video/mp4"
                assert len(await reel.read()) > 1000
        finally:
            api.stop()
            worker.stop()
    assert f"session {session_id} started (attempt 1" in worker.log()
    assert "started (attempt" not in api.log()
    # Neither node kept the video or an artifact on its own disk.
    for data_dir in (tmp_path / "api", tmp_path / "worker"):
        kept = [path for path in data_dir.rglob("*") if path.is_file()]
        assert not [path for path in kept if path.suffix in (".mp4", ".jpg")], kept


async def test_a_resumable_upload_whose_node_is_killed_resumes_on_another_node(
    tmp_path, bucket_env, redis_url, make_video
):
    """tus on a cluster with a bucket: node A takes the first bytes and dies mid-request;
    node B, which shares only Redis and the bucket with it, takes the rest."""
    video = make_video("big.mp4", seconds=8.0, width=640, height=480, grain=60)
    data = video.read_bytes()
    assert len(data) > 12 * MIB, len(data)  # more than one part of the bucket
    prefix = f"tus-{uuid.uuid4().hex}"
    shared = {
        "storage_url": f"s3://{bucket_env.bucket}/{prefix}",
        "redis_url": redis_url,
        "node_lease_seconds": 2,  # A's lock on the upload lapses soon after it dies
    }
    a = ServerProcess(tmp_path / "a", tmp_path, log_path=tmp_path / "a.log", **shared)
    b = ServerProcess(tmp_path / "b", tmp_path, log_path=tmp_path / "b.log", **shared)
    tus = {"Tus-Resumable": "1.0.0"}
    stream = {**tus, "Content-Type": "application/offset+octet-stream"}
    first = 6 * MIB + 12345  # a part and a tail short of the next one
    held = asyncio.Event()

    async def then_stall():
        yield data[first : first + 3 * MIB]
        await held.wait()

    async with aiohttp.ClientSession() as http:
        try:
            await a.ready(http)
            await b.ready(http)
            created = await http.post(
                f"{a.url}{V1}/uploads/",
                headers={
                    **tus,
                    "Upload-Length": str(len(data)),
                    "Upload-Metadata": "filename " + base64.b64encode(b"big.mp4").decode(),
                },
            )
            assert created.status == 201, await created.text()
            path = created.headers["Location"]
            async with http.patch(
                f"{a.url}{path}", data=data[:first], headers={**stream, "Upload-Offset": "0"}
            ) as answer:
                assert answer.status == 204, await answer.text()
            cut = asyncio.ensure_future(
                http.patch(
                    f"{a.url}{path}",
                    data=then_stall(),
                    headers={**stream, "Upload-Offset": str(first)},
                )
            )
            await asyncio.sleep(1.0)  # A is taking the stalled request's bytes
            a.proc.kill()
            a.proc.wait(timeout=BOUND)
            held.set()
            with pytest.raises(aiohttp.ClientError):
                await cut

            async with http.head(f"{b.url}{path}", headers=tus) as head:
                assert head.status == 200
                offset = int(head.headers["Upload-Offset"])
            assert offset >= first  # nothing acknowledged was lost
            deadline = asyncio.get_running_loop().time() + BOUND
            while True:  # 423 while A's lock has not lapsed yet
                async with http.patch(
                    f"{b.url}{path}",
                    data=data[offset:],
                    headers={**stream, "Upload-Offset": str(offset)},
                ) as answer:
                    if answer.status != 423:
                        assert answer.status == 204, await answer.text()
                        session_id = answer.headers["Session-Id"]
                        break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.5)
            async with http.get(f"{b.url}{V1}/results/{session_id}/video") as video_answer:
                assert await video_answer.read() == data
        finally:
            a.stop()
            b.stop()
