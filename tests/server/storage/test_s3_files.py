"""`S3Files` against a real S3 server (SeaweedFS from tests/server/s3_server.py, checking SigV4)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import server.storage.s3
from server.storage.files import StorageMisconfigured
from server.storage.s3 import MIN_PART_BYTES, S3Files, parse_storage_url
from tests.server.s3_server import S3Server

MakeFiles = Callable[..., Awaitable[S3Files]]
# Three parts of S3's minimum size and a few bytes: a multipart upload of 3 parts.
THREE_PARTS = 2 * MIN_PART_BYTES + 12345


class Behind:
    """The server's bucket through a plain synchronous client, behind `S3Files`' back."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def unfinished_uploads(self, prefix: str) -> list[dict[str, Any]]:
        listed = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return listed.get("Uploads", [])

    def keys(self, prefix: str) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [entry["Key"] for entry in listed.get("Contents", [])]

    def content_type(self, key: str) -> str:
        return self.client.head_object(Bucket=self.bucket, Key=key)["ContentType"]


@pytest.fixture
def behind(s3_server: S3Server) -> Iterator[Behind]:
    client = s3_server.client()
    yield Behind(client, s3_server.bucket)
    client.close()


async def uploaded(files: S3Files, location: str, data: bytes, chunk: int = 100_003) -> int:
    """Upload `data` in chunks of an odd size (so they straddle the parts)."""
    upload = await files.start_upload(location)
    for start in range(0, len(data), chunk):
        await upload.write(data[start : start + chunk])
    return await upload.finish()


async def read_all(files: S3Files, location: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in files.read(location, start, end)])


def test_keys_are_prefix_uploads_and_artifacts_of_the_session() -> None:
    with_prefix = S3Files("bucket", "/cluster/a/")
    without = S3Files("bucket", "")

    assert with_prefix.upload_location("s1", "Clip.MP4") == "cluster/a/uploads/s1/source.mp4"
    assert with_prefix.artifacts_location("s1") == "cluster/a/artifacts/s1/"
    assert without.upload_location("s1", "clip") == "uploads/s1/source"
    assert without.artifacts_location("s1") == "artifacts/s1/"


def test_parse_storage_url_takes_s3_urls_only() -> None:
    assert parse_storage_url("s3://bucket") == ("bucket", "")
    assert parse_storage_url("s3://bucket/some//prefix/") == ("bucket", "some/prefix")
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL=https://storage.googleapis.com"):
        parse_storage_url("gs://bucket/prefix")
    for wrong in ("bucket/prefix", "s3:///prefix", "https://bucket/x", "s3://bucket/p?x=1"):
        with pytest.raises(ValueError, match=r"s3://bucket\[/prefix\]"):
            parse_storage_url(wrong)


async def test_a_multipart_upload_round_trips_through_both_fetches_and_ranged_reads(
    files: S3Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(THREE_PARTS)
    location = files.upload_location("s1", "clip.mp4")

    assert await uploaded(files, location, data) == len(data)

    stored = await files.stat(location)
    assert stored is not None and stored.size == len(data)
    assert stored.etag is not None and stored.etag.endswith('-3"')  # S3's mark of 3 parts
    # Ranges smaller than the object's parts, so that four fetches at once write many.
    monkeypatch.setattr(server.storage.s3, "RANGE_BYTES", 1024 * 1024 + 7)
    (tmp_path / "ranged").mkdir()
    fetched = await files.bring_local(location, tmp_path / "ranged")
    assert fetched == tmp_path / "ranged" / "source.mp4"
    assert fetched.read_bytes() == data
    (tmp_path / "streamed").mkdir()
    streamed = await files.bring_local_streamed(location, tmp_path / "streamed")
    assert streamed.read_bytes() == data
    edge = MIN_PART_BYTES
    for start, end in ((0, 1), (edge - 3, edge + 3), (len(data) - 10, len(data)), (0, len(data))):
        assert await read_all(files, location, start, end) == data[start:end]
    assert await read_all(files, location, 7, 7) == b""


async def test_a_file_under_one_part_and_an_empty_file_are_stored_whole(
    files: S3Files, tmp_path: Path
) -> None:
    small, empty = files.upload_location("s1", "a.mp4"), files.upload_location("s2", "b.mp4")

    assert await uploaded(files, small, b"tiny video") == 10
    assert await uploaded(files, empty, b"") == 0

    assert await read_all(files, small, 0, 10) == b"tiny video"
    stored = await files.stat(empty)
    assert stored is not None and stored.size == 0
    assert (await files.bring_local(empty, tmp_path)).read_bytes() == b""
    assert (await files.bring_local_streamed(small, tmp_path)).read_bytes() == b"tiny video"


async def test_abort_leaves_no_object_and_no_unfinished_upload(
    files: S3Files, behind: Behind
) -> None:
    location = files.upload_location("s1", "clip.mp4")
    upload = await files.start_upload(location)
    await upload.write(os.urandom(MIN_PART_BYTES + 1))
    assert len(behind.unfinished_uploads(location)) == 1

    await upload.abort()
    await upload.abort()

    assert behind.unfinished_uploads(location) == []
    assert await files.stat(location) is None
    with pytest.raises(RuntimeError):
        await upload.write(b"more")


async def test_abort_after_finish_deletes_the_object(files: S3Files) -> None:
    location = files.upload_location("s1", "clip.mp4")
    upload = await files.start_upload(location)
    await upload.write(b"whole")
    await upload.finish()

    await upload.abort()

    assert await files.stat(location) is None


async def test_missing_files_are_none_to_stat_and_not_found_to_read(
    files: S3Files, tmp_path: Path
) -> None:
    location = files.upload_location("nobody", "clip.mp4")

    assert await files.stat(location) is None
    with pytest.raises(FileNotFoundError):
        await read_all(files, location, 0, 10)
    with pytest.raises(FileNotFoundError):
        await files.bring_local(location, tmp_path)
    with pytest.raises(FileNotFoundError):
        await files.bring_local_streamed(location, tmp_path)
    assert os.listdir(tmp_path) == []  # no partial file left


async def test_kept_artifacts_are_stored_under_their_names_with_their_types(
    files: S3Files, behind: Behind, tmp_path: Path
) -> None:
    artifacts = files.artifacts_location("s1")
    folder = files.worker_output(artifacts, tmp_path)
    reel = os.urandom(MIN_PART_BYTES + 99)  # large enough for a multipart upload
    (folder / "thumbnails").mkdir(parents=True)
    (folder / "reel.mp4").write_bytes(reel)
    (folder / "thumbnails" / "000.jpg").write_bytes(b"jpeg")
    (folder / "notes").write_bytes(b"{}")

    await files.keep_artifacts(folder, artifacts)

    expected = {"reel.mp4": reel, "thumbnails/000.jpg": b"jpeg", "notes": b"{}"}
    types = {"reel.mp4": "video/mp4", "thumbnails/000.jpg": "image/jpeg"}
    for name, content in expected.items():
        location = files.artifact(artifacts, name)
        assert location is not None
        stored = await files.stat(location)
        assert stored is not None and stored.size == len(content)
        assert await read_all(files, location, 0, len(content)) == content
        assert behind.content_type(location) == types.get(name, "application/octet-stream")
    assert behind.unfinished_uploads(artifacts) == []


def test_artifact_names_must_stay_inside_the_artifacts(files: S3Files) -> None:
    artifacts = files.artifacts_location("s1")

    assert files.artifact(artifacts, "thumbnails/../reel.mp4") == f"{artifacts}reel.mp4"
    for outside in ("../x", "thumbnails/../../x", "/etc/passwd", "", "a\\b"):
        assert files.artifact(artifacts, outside) is None


async def test_discard_artifacts_removes_them_and_keeps_the_upload(
    files: S3Files, tmp_path: Path
) -> None:
    upload, artifacts = files.upload_location("s1", "a.mp4"), files.artifacts_location("s1")
    await uploaded(files, upload, b"video")
    (tmp_path / "reel.mp4").write_bytes(b"reel")
    await files.keep_artifacts(tmp_path, artifacts)

    await files.discard_artifacts(artifacts)
    await files.discard_artifacts(artifacts)

    assert await files.stat(f"{artifacts}reel.mp4") is None
    assert await files.stat(upload) is not None


async def test_signed_and_probe_urls_serve_plain_gets_and_ranges(files: S3Files) -> None:
    location = files.upload_location("s1", "clip.mp4")
    await uploaded(files, location, b"0123456789")
    signed = await files.signed_url(location, 60)
    assert signed is not None

    async with aiohttp.ClientSession() as http:
        for url in (signed, await files.probe_source(location)):
            async with http.get(url) as whole:
                assert whole.status == 200
                assert await whole.read() == b"0123456789"
            async with http.get(url, headers={"Range": "bytes=3-5"}) as part:
                assert part.status == 206
                assert await part.read() == b"345"
        async with http.get(signed.replace("X-Amz-Signature=", "X-Amz-Signature=0")) as forged:
            assert forged.status == 403


async def test_remove_session_removes_the_upload_and_every_artifact(
    files: S3Files, behind: Behind, tmp_path: Path
) -> None:
    upload, artifacts = files.upload_location("s1", "a.mp4"), files.artifacts_location("s1")
    other = files.upload_location("s2", "a.mp4")
    await uploaded(files, upload, b"video")
    await uploaded(files, other, b"other video")
    (tmp_path / "thumbnails").mkdir()
    for i in range(3):
        (tmp_path / "thumbnails" / f"{i:03d}.jpg").write_bytes(b"jpeg")
    await files.keep_artifacts(tmp_path, artifacts)

    await files.remove_session(upload, artifacts)
    await files.remove_session(upload, artifacts)

    assert behind.keys(files.prefix) == [other]


async def test_holders_are_the_sessions_with_files_and_remove_orphan_ends_one(
    files: S3Files, tmp_path: Path
) -> None:
    before = datetime.now(timezone.utc) - timedelta(minutes=1)
    await uploaded(files, files.upload_location("with-upload", "a.mp4"), b"video")
    (tmp_path / "reel.mp4").write_bytes(b"reel")
    await files.keep_artifacts(tmp_path, files.artifacts_location("with-upload"))
    await files.keep_artifacts(tmp_path, files.artifacts_location("artifacts-only"))

    holders = await files.holders()

    assert set(holders) == {"with-upload", "artifacts-only"}
    assert all(changed > before for changed in holders.values())
    await files.remove_orphan("with-upload")
    assert set(await files.holders()) == {"artifacts-only"}


async def test_abort_stale_uploads_ends_old_unfinished_uploads_only(
    files: S3Files, behind: Behind
) -> None:
    part = os.urandom(MIN_PART_BYTES)
    old = await files.start_upload(files.upload_location("old", "a.mp4"))
    await old.write(part)
    [old_listed] = behind.unfinished_uploads(files.upload_location("old", "a.mp4"))
    # S3 lists start times to the second: the young upload starts in a later second.
    next_second = old_listed["Initiated"] + timedelta(seconds=1)
    await asyncio.sleep(max(0.0, (next_second - datetime.now(timezone.utc)).total_seconds()))
    young = await files.start_upload(files.upload_location("young", "a.mp4"))
    await young.write(part)
    [young_listed] = behind.unfinished_uploads(files.upload_location("young", "a.mp4"))

    assert await files.abort_stale_uploads(young_listed["Initiated"]) == 1

    remaining = behind.unfinished_uploads(files.prefix)
    assert [entry["UploadId"] for entry in remaining] == [young_listed["UploadId"]]
    await young.abort()


async def test_check_passes_on_a_bucket_we_may_write(files: S3Files, behind: Behind) -> None:
    await files.check()

    assert behind.keys(files.prefix) == []


async def test_check_names_a_wrong_secret(make_files: MakeFiles, s3_server: S3Server) -> None:
    files = await make_files(secret_key="not-the-secret")

    with pytest.raises(StorageMisconfigured, match="SignatureDoesNotMatch") as refused:
        await files.check()

    message = str(refused.value)
    assert "\n" not in message
    assert s3_server.bucket in message and s3_server.endpoint_url in message


async def test_check_names_a_missing_bucket(make_files: MakeFiles, s3_server: S3Server) -> None:
    files = await make_files(bucket="no-such-bucket")

    with pytest.raises(StorageMisconfigured, match="NoSuchBucket") as refused:
        await files.check()

    assert "no-such-bucket" in str(refused.value)
    assert s3_server.endpoint_url in str(refused.value)
