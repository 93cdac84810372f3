"""Resumable uploads (tus 1.0.0) at /api/v1/video/uploads/, driven by `tuspy`, a tus client
this project did not write, and by hand where the protocol's errors are the point.

Every test runs on both backends: records in SQLite, and in Redis.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path

import aiohttp
import pytest
from tusclient.client import TusClient

from server.state.janitor import SweepReport
from server.web import app_keys as keys
from tests.server.http_helpers import V1, finished, start

pytestmark = pytest.mark.usefixtures("backend")

UPLOADS = f"{V1}/uploads/"
TUS = {"Tus-Resumable": "1.0.0"}
STREAM = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**values: str) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items()
    )


def files_under(folder: Path) -> list[Path]:
    """Files under a DATA_DIR but its session store."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("sessions.db")]


async def create(client, length: int, **values: str) -> str:
    """POST a new upload; its path."""
    headers = {**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(**values)}
    response = await client.post(UPLOADS, headers=headers)
    assert response.status == 201, await response.text()
    return response.headers["Location"]


async def offset_of(client, path: str) -> int:
    response = await client.head(path, headers=TUS)
    assert response.status == 200
    return int(response.headers["Upload-Offset"])


async def test_tuspy_uploads_in_chunks_and_the_upload_becomes_a_queued_session(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path)
    tus = TusClient(str(client.make_url(UPLOADS)))
    # A stream of ours: with a path, tuspy opens the file and never closes it.
    with sample_video.open("rb") as stream:
        uploader = tus.async_uploader(
            file_stream=stream,
            chunk_size=16 * 1024,
            metadata={"filename": "match.mp4", "analysis_type": "highlights"},
        )
        await uploader.upload()
    assert uploader.offset == sample_video.stat().st_size
    upload_path = uploader.url.split(str(client.make_url("")).rstrip("/"), 1)[-1]

    head = await client.head(upload_path, headers=TUS)
    session_id = head.headers["Session-Id"]
    described = await (await client.get(upload_path)).json()
    assert described["sessionId"] == session_id and described["offset"] == described["length"]
    done = await finished(client, session_id)
    assert done.status.value == "completed" and done.video.filename == "match.mp4"
    video = await client.get(f"{V1}/results/{session_id}/video")
    assert await video.read() == sample_video.read_bytes()


async def test_a_new_tuspy_uploader_resumes_where_the_server_stands(
    aiohttp_client, tmp_path, sample_video
):
    """As a client whose connection or process died: it HEADs and goes on from there."""
    client = await start(aiohttp_client, tmp_path)
    tus = TusClient(str(client.make_url(UPLOADS)))
    with sample_video.open("rb") as stream:
        first = tus.async_uploader(
            file_stream=stream, chunk_size=8 * 1024, metadata={"filename": "a.mp4"}
        )
        first.url = await first.create_url()
        first.offset = 0
        for _ in range(3):
            await first.upload_chunk()
    upload_path = str(aiohttp.client.URL(first.url).path)
    assert await offset_of(client, upload_path) == 3 * 8 * 1024

    with sample_video.open("rb") as stream:
        # Given a URL, tuspy asks the server for the offset at once, with a blocking HEAD:
        # in a thread, so the server in this event loop can answer it.
        resumed = await asyncio.to_thread(
            tus.async_uploader, file_stream=stream, url=first.url, chunk_size=8 * 1024
        )
        assert resumed.offset == 3 * 8 * 1024  # it asked the server
        await resumed.upload()
    session_id = (await client.head(upload_path, headers=TUS)).headers["Session-Id"]
    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    assert status["status"] == "uploaded"  # no analysis_type: the two-step flow
    video = await client.get(f"{V1}/results/{session_id}/video")
    assert await video.read() == sample_video.read_bytes()


async def test_a_sweep_while_an_upload_is_being_created_leaves_its_file(
    aiohttp_client, tmp_path, monkeypatch
):
    """The upload's file exists a moment before its record: not an orphan meanwhile."""
    client = await start(aiohttp_client, tmp_path)
    app = client.server.app
    files, reports = app[keys.FILES], []
    begin = files.begin_resumable

    async def begin_then_sweep(location: str):
        upload = await begin(location)
        reports.append(await app[keys.JANITOR].sweep())
        return upload

    monkeypatch.setattr(files, "begin_resumable", begin_then_sweep)
    path = await create(client, 4, filename="a.mp4")

    assert reports == [SweepReport(expired_sessions=0, orphan_paths=0)]
    upload_id = path.rsplit("/", 1)[-1]
    kept = files_under(app[keys.PATHS].uploads)
    assert [(file.parent.name, file.stat().st_size) for file in kept] == [(upload_id, 0)]


async def test_bytes_of_a_patch_cut_off_mid_way_are_kept(aiohttp_client, tmp_path, sample_video):
    client = await start(aiohttp_client, tmp_path, like_run_app=True)
    data = sample_video.read_bytes()
    path = await create(client, len(data), filename="cut.mp4")
    sent = 64 * 1024

    async def cut_off():
        yield data[:sent]
        await asyncio.sleep(0.3)  # the server has read it
        raise ConnectionResetError("the train went into a tunnel")

    with pytest.raises(aiohttp.ClientError):
        await client.patch(path, data=cut_off(), headers={**STREAM, "Upload-Offset": "0"})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (kept := await offset_of(client, path)) != sent:  # the request ends server-side
        assert loop.time() < deadline, kept
        await asyncio.sleep(0.05)
    rest = await client.patch(
        path, data=data[sent:], headers={**STREAM, "Upload-Offset": str(sent)}
    )
    assert rest.status == 204 and int(rest.headers["Upload-Offset"]) == len(data)
    video = await client.get(f"{V1}/results/{rest.headers['Session-Id']}/video")
    assert await video.read() == data


async def test_creation_with_upload_takes_the_first_bytes_at_once(
    aiohttp_client, tmp_path, sample_video
):
    client = await start(aiohttp_client, tmp_path)
    data = sample_video.read_bytes()
    headers = {
        **STREAM,
        "Upload-Length": str(len(data)),
        "Upload-Metadata": metadata(filename="x.mp4", analysis_type="workout"),
    }
    response = await client.post(UPLOADS, data=data, headers=headers)
    assert response.status == 201
    assert int(response.headers["Upload-Offset"]) == len(data)
    done = await finished(client, response.headers["Session-Id"])
    assert done.analysis_type is not None and done.analysis_type.value == "workout"


async def test_options_says_what_this_server_supports(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, max_upload_mb=3)
    response = await client.options(UPLOADS)
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
    }
    assert response.headers["Tus-Max-Size"] == str(3 * 1024 * 1024)


async def test_termination_removes_the_upload_and_its_bytes(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path)
    path = await create(client, 1000, filename="x.mp4")
    part = await client.patch(path, data=b"\0" * 400, headers={**STREAM, "Upload-Offset": "0"})
    assert part.status == 204
    assert files_under(tmp_path / "data") != []
    assert (await client.delete(path, headers=TUS)).status == 204
    assert (await client.head(path, headers=TUS)).status == 404
    assert files_under(tmp_path / "data") == []


@pytest.mark.parametrize(
    ("headers", "body", "status", "words"),
    [
        ({"Tus-Resumable": "0.2.2"}, b"", 412, "1.0.0"),
        ({**STREAM, "Upload-Offset": "5"}, b"abc", 409, "server has 0 bytes"),
        ({**STREAM, "Upload-Offset": "0"}, b"x" * 1001, 413, "1000 bytes"),
        ({**TUS, "Content-Type": "video/mp4", "Upload-Offset": "0"}, b"abc", 415, "offset"),
        ({**STREAM, "Upload-Offset": "-1"}, b"abc", 400, "Upload-Offset"),
        ({**STREAM}, b"abc", 400, "Upload-Offset is required"),
    ],
)
async def test_a_bad_patch_is_a_clear_error_and_changes_nothing(
    aiohttp_client, tmp_path, headers, body, status, words
):
    client = await start(aiohttp_client, tmp_path)
    path = await create(client, 1000, filename="x.mp4")
    response = await client.patch(path, data=body, headers=headers)
    assert response.status == status
    answer = await response.json()
    assert words in answer["message"], answer
    assert await offset_of(client, path) == 0
    if status == 412:
        assert response.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({**TUS}, 400, "Upload-Length is required"),
        ({**TUS, "Upload-Length": "many"}, 400, "whole number"),
        ({**TUS, "Upload-Length": str(2 * 1024 * 1024)}, 413, "1 MiB"),
        ({**TUS, "Upload-Length": "10", "Upload-Metadata": "filename ***"}, 400, "base64"),
        (
            {**TUS, "Upload-Length": "10", "Upload-Metadata": metadata(analysis_type="dance")},
            400,
            "dance",
        ),
        (
            {
                **TUS,
                "Upload-Length": "10",
                "Upload-Metadata": metadata(analysis_type="workout", params='{"nope": 1}'),
            },
            400,
            "nope",
        ),
        ({"Upload-Length": "10"}, 412, "Tus-Resumable"),
    ],
)
async def test_a_bad_creation_is_refused_before_any_byte(
    aiohttp_client, tmp_path, headers, status, words
):
    client = await start(aiohttp_client, tmp_path, max_upload_mb=1)
    response = await client.post(UPLOADS, headers=headers)
    assert response.status == status
    assert words in (await response.json())["message"]
    assert files_under(tmp_path / "data") == []


async def test_unknown_and_expired_uploads_are_404_and_410(aiohttp_client, tmp_path):
    client = await start(aiohttp_client, tmp_path, upload_expires_hours=0.2 / 3600)
    assert (await client.head(f"{UPLOADS}{uuid.uuid4()}", headers=TUS)).status == 404
    assert (await client.get(f"{UPLOADS}no-such-upload")).status == 400  # not an upload id
    path = await create(client, 10, filename="x.mp4")
    await asyncio.sleep(0.3)
    expired = await client.patch(path, data=b"abc", headers={**STREAM, "Upload-Offset": "0"})
    assert expired.status == 410 and "start a new one" in (await expired.json())["message"]


async def test_an_upload_that_is_not_a_video_is_415_at_its_last_byte_and_leaves_nothing(
    aiohttp_client, tmp_path
):
    client = await start(aiohttp_client, tmp_path)
    data = b"this is not a video" * 100
    path = await create(client, len(data), filename="fake.mp4", analysis_type="highlights")
    first = await client.patch(path, data=data[:500], headers={**STREAM, "Upload-Offset": "0"})
    assert first.status == 204
    last = await client.patch(path, data=data[500:], headers={**STREAM, "Upload-Offset": "500"})
    assert last.status == 415
    assert (await client.head(path, headers=TUS)).status == 404
    assert files_under(tmp_path / "data") == []
    sessions = await (await client.get(f"{V1}/sessions")).json()
    assert sessions["count"] == 0


async def test_the_api_key_guards_every_tus_route_and_cors_exposes_its_headers(
    aiohttp_client, tmp_path
):
    client = await start(
        aiohttp_client, tmp_path, api_key="k" * 24, cors_origins=("https://app.example",)
    )
    headers = {**TUS, "Upload-Length": "10", "Origin": "https://app.example"}
    assert (await client.post(UPLOADS, headers=headers)).status == 401
    assert (await client.options(UPLOADS)).status == 401
    keyed = {**headers, "Authorization": f"Bearer {'k' * 24}"}
    created = await client.post(UPLOADS, headers=keyed)
    assert created.status == 201
    exposed = created.headers["Access-Control-Expose-Headers"]
    assert "Upload-Offset" in exposed and "Session-Id" in exposed and "Location" in exposed
    path = created.headers["Location"]
    assert (await client.head(path, headers=TUS)).status == 401
    assert (
        await client.patch(path, data=b"a", headers={**STREAM, "Upload-Offset": "0"})
    ).status == 401
    preflight = await client.options(
        path,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "Tus-Resumable, Upload-Offset",
        },
    )
    assert preflight.status == 204
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Upload-Offset" in preflight.headers["Access-Control-Allow-Headers"]
