"""Resumable uploads (`begin_resumable` ... `finish_resumable`) on both stores: `LocalFiles`
under a temporary DATA_DIR and `S3Files` on the module's SeaweedFS, with parts of S3's
minimum size so that a few MiB make several parts and leave a tail."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from server.storage.files import Resumable, SessionFiles
from server.storage.local import LocalFiles
from server.storage.paths import DataPaths
from server.storage.s3 import MIB, MIN_PART_BYTES, S3Files
from tests.server.s3_server import S3Server
from tests.server.storage.conftest import s3_files

# What an HTTP body gives at a time (aiohttp's reads are of this order).
PIECE = 256 * 1024


class Broken(Exception):
    """The client's connection dropped mid-request."""


async def pieces(data: bytes, *, then_fail: bool = False) -> AsyncIterator[bytes]:
    """`data` as a request body gives it; raise Broken after it if `then_fail`."""
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]
    if then_fail:
        raise Broken


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionFiles]:
    """LocalFiles on a temporary DATA_DIR, or open S3Files under a fresh prefix."""
    if request.param == "local":
        yield LocalFiles(DataPaths(tmp_path / "data"))
        return
    server: S3Server = request.getfixturevalue("s3_server")
    files = await s3_files(server).open()
    try:
        yield files
    finally:
        await files.close()


@pytest.fixture
async def bucket_files(s3_server: S3Server) -> AsyncIterator[S3Files]:
    files = await s3_files(s3_server).open()
    yield files
    await files.close()


class Behind:
    """The bucket through a plain synchronous client, behind `S3Files`' back."""

    def __init__(self, server: S3Server, prefix: str) -> None:
        self.client = server.client()
        self.bucket = server.bucket
        self.prefix = prefix

    def keys(self, under: str = "") -> set[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{under}")
        return {entry["Key"] for entry in listed.get("Contents", [])}

    def tails(self) -> set[str]:
        return self.keys("tus/")

    def unfinished_uploads(self) -> list[dict[str, object]]:
        listed = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return listed.get("Uploads", [])


@pytest.fixture
def behind(s3_server: S3Server, bucket_files: S3Files) -> Iterator[Behind]:
    seen = Behind(s3_server, bucket_files.prefix)
    yield seen
    seen.client.close()


async def kept_bytes(files: SessionFiles, location: str, scratch: Path) -> bytes:
    """The file at `location`, read back through a local copy in `scratch` if need be."""
    return (await files.bring_local(location, scratch)).read_bytes()


def tail_of(upload: Resumable) -> set[str]:
    """The tail object a bucket's state names (none: an empty set)."""
    tail = json.loads(upload.handle)["tail"]
    return set() if tail is None else {tail["key"]}


async def test_uneven_appends_finish_as_the_concatenation(
    store: SessionFiles, tmp_path: Path
) -> None:
    sizes = [1 * MIB, 7 * MIB, 3, 12 * MIB, 0]
    data = [os.urandom(size) for size in sizes]
    location = store.upload_location("uneven", "clip.mp4")
    upload = await store.begin_resumable(location)
    assert upload.offset == 0

    for piece in data:
        before = upload.offset
        upload = await store.append_resumable(upload, pieces(piece))
        assert upload.offset == before + len(piece)
    await store.finish_resumable(upload)

    whole = b"".join(data)
    found = await store.stat(location)
    assert found is not None and found.size == len(whole)
    assert await kept_bytes(store, location, tmp_path) == whole


async def test_an_append_repeated_from_the_state_before_it_gives_the_same_file(
    store: SessionFiles, tmp_path: Path
) -> None:
    """A node that kept the bytes but died before its record stored the new state: the
    client sends them again from the old offset, to this or another node."""
    first, second, third = os.urandom(3 * MIB), os.urandom(9 * MIB), os.urandom(4 * MIB)
    location = store.upload_location("repeated", "clip.mp4")
    old = await store.append_resumable(await store.begin_resumable(location), pieces(first))
    await store.append_resumable(old, pieces(second))  # its new state is lost

    again = await store.append_resumable(old, pieces(second))
    upload = await store.append_resumable(again, pieces(third))
    await store.finish_resumable(upload)

    assert await kept_bytes(store, location, tmp_path) == first + second + third


async def test_an_append_whose_body_fails_leaves_its_input_state_true(
    store: SessionFiles, tmp_path: Path
) -> None:
    """The failed append sent more than the resumed one (parts the final file must not
    list, bytes past the offset on disk); resuming from the input state gives the file."""
    first, sent, rest = os.urandom(3 * MIB), os.urandom(14 * MIB), os.urandom(2 * MIB)
    location = store.upload_location("broken", "clip.mp4")
    upload = await store.append_resumable(await store.begin_resumable(location), pieces(first))

    with pytest.raises(Broken):
        await store.append_resumable(upload, pieces(sent, then_fail=True))
    upload = await store.append_resumable(upload, pieces(rest))
    await store.finish_resumable(upload)

    assert await kept_bytes(store, location, tmp_path) == first + rest


async def test_a_zero_byte_upload_finishes_as_an_empty_file(
    store: SessionFiles, tmp_path: Path
) -> None:
    location = store.upload_location("empty", "clip.mp4")
    begun = await store.begin_resumable(location)

    upload = await store.append_resumable(begun, pieces(b""))
    await store.finish_resumable(upload)

    assert upload == begun
    found = await store.stat(location)
    assert found is not None and found.size == 0
    assert await kept_bytes(store, location, tmp_path) == b""


async def test_a_finish_repeated_after_it_completed_keeps_the_file(
    store: SessionFiles, tmp_path: Path
) -> None:
    """A node that finished the upload but died before its record said so (a file that
    ends on a whole part, and one whose last bytes waited in a tail)."""
    for name, size in (("whole-parts", MIN_PART_BYTES), ("with-tail", MIN_PART_BYTES + 5)):
        data = os.urandom(size)
        location = store.upload_location(name, "clip.mp4")
        begun = await store.begin_resumable(location)
        upload = await store.append_resumable(begun, pieces(data))

        await store.finish_resumable(upload)
        await store.finish_resumable(upload)

        assert await kept_bytes(store, location, tmp_path) == data


async def test_abort_removes_every_byte_and_is_safe_to_repeat(store: SessionFiles) -> None:
    location = store.upload_location("aborted", "clip.mp4")
    old = await store.append_resumable(
        await store.begin_resumable(location), pieces(os.urandom(2 * MIB))
    )
    await store.append_resumable(old, pieces(os.urandom(6 * MIB)))  # a tail of no state

    await store.abort_resumable(old)
    await store.abort_resumable(old)

    assert await store.stat(location) is None
    assert await store.holders() == {}


async def test_abort_after_finish_removes_the_file(store: SessionFiles) -> None:
    location = store.upload_location("finished", "clip.mp4")
    upload = await store.append_resumable(
        await store.begin_resumable(location), pieces(os.urandom(1000))
    )
    await store.finish_resumable(upload)

    await store.abort_resumable(upload)

    assert await store.stat(location) is None


async def test_abort_leaves_no_object_no_tail_and_no_unfinished_upload(
    bucket_files: S3Files, behind: Behind
) -> None:
    location = bucket_files.upload_location("aborted", "clip.mp4")
    old = await bucket_files.append_resumable(
        await bucket_files.begin_resumable(location), pieces(os.urandom(2 * MIB))
    )
    await bucket_files.append_resumable(old, pieces(os.urandom(6 * MIB)))
    assert behind.tails() and behind.unfinished_uploads()

    await bucket_files.abort_resumable(old)

    assert behind.keys() == set()
    assert behind.unfinished_uploads() == []


async def test_tails_are_at_most_the_input_state_s_and_the_new_one(
    bucket_files: S3Files, behind: Behind
) -> None:
    """Each append deletes the tails of no state before it writes its own, so those of a
    crashed or failed append never pile up; a finish leaves none."""
    location = bucket_files.upload_location("tails", "clip.mp4")
    upload = await bucket_files.begin_resumable(location)
    for size in (1 * MIB, 2 * MIB, 3 * MIB):  # all short of a part, each a new tail
        new = await bucket_files.append_resumable(upload, pieces(os.urandom(size)))
        assert behind.tails() == tail_of(upload) | tail_of(new)
        upload = new

    lost = await bucket_files.append_resumable(upload, pieces(os.urandom(1 * MIB)))
    with pytest.raises(Broken):
        await bucket_files.append_resumable(upload, pieces(b"x", then_fail=True))
    assert behind.tails() == tail_of(upload) | tail_of(lost)
    again = await bucket_files.append_resumable(upload, pieces(os.urandom(1 * MIB)))
    assert behind.tails() == tail_of(upload) | tail_of(again)
    ends_on_a_part = await bucket_files.append_resumable(
        again, pieces(os.urandom(3 * MIN_PART_BYTES - again.offset))
    )
    assert tail_of(ends_on_a_part) == set()
    assert behind.tails() == tail_of(again)

    await bucket_files.finish_resumable(ends_on_a_part)

    assert behind.tails() == set()
    assert behind.unfinished_uploads() == []


async def test_the_sweep_sees_no_session_in_tails_and_ends_stale_resumable_uploads(
    bucket_files: S3Files, behind: Behind
) -> None:
    location = bucket_files.upload_location("swept", "clip.mp4")
    await bucket_files.append_resumable(
        await bucket_files.begin_resumable(location), pieces(os.urandom(1000))
    )

    assert await bucket_files.holders() == {}
    earlier = datetime.now(timezone.utc) - timedelta(hours=1)
    assert await bucket_files.abort_stale_uploads(earlier) == 0
    assert behind.tails()

    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert await bucket_files.abort_stale_uploads(later) == 1
    assert behind.keys() == set()
    assert behind.unfinished_uploads() == []


async def test_remove_orphan_takes_the_tails_of_the_session_too(
    bucket_files: S3Files, behind: Behind
) -> None:
    location = bucket_files.upload_location("orphan", "clip.mp4")
    await bucket_files.append_resumable(
        await bucket_files.begin_resumable(location), pieces(os.urandom(1000))
    )

    await bucket_files.remove_orphan("orphan")

    assert behind.tails() == set()
    await bucket_files.abort_stale_uploads(datetime.now(timezone.utc) + timedelta(minutes=1))


async def test_a_large_append_holds_about_a_part_not_the_whole_body(
    bucket_files: S3Files, behind: Behind
) -> None:
    """64 MiB through one iterator, each piece made as it is asked for: the most Python
    memory held at once stays within a few parts."""
    total = 64 * MIB

    async def body() -> AsyncIterator[bytes]:
        for index in range(total // PIECE):
            yield bytes([index % 251]) * PIECE

    location = bucket_files.upload_location("large", "clip.mp4")
    upload = await bucket_files.begin_resumable(location)
    tracemalloc.start()
    try:
        upload = await bucket_files.append_resumable(upload, body())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert upload.offset == total
    assert peak < 4 * MIN_PART_BYTES
    await bucket_files.abort_resumable(upload)
