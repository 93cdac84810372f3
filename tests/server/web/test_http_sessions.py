"""The v1 session routes: status, results, artifacts, cancel, cleanup, analyze and the list."""

from __future__ import annotations

import uuid

import pytest

from server.web import app_keys as keys
from tests.server.http_helpers import (
    ID_ROUTES,
    STATUS_KEYS,
    V1,
    finished,
    start,
    until_running,
    until_status,
    upload_id,
)

# The whole v1 HTTP behaviour, on SQLite and on Redis.
pytestmark = pytest.mark.usefixtures("backend")

UNKNOWN = str(uuid.uuid4())
NOT_UUID4 = [
    "nope",
    "12345",
    str(uuid.uuid1()),  # a UUID, but not a version 4 one
    "{" + str(uuid.uuid4()) + "}",
    str(uuid.uuid4()).replace("-", ""),
    "550e8400e29b-41d4-a716-446655440000--",  # 36 characters, hyphens misplaced
]


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await start(aiohttp_client, tmp_path)


@pytest.mark.parametrize("method, route", ID_ROUTES)
@pytest.mark.parametrize("bad_id", NOT_UUID4)
async def test_a_path_id_that_is_not_a_uuid4_is_a_400_on_every_route(client, method, route, bad_id):
    response = await client.request(method, route.format(id=bad_id), json={})
    body = await response.json()
    assert response.status == 400, body
    assert body == {
        "error": "Invalid session id",
        "message": "A session id is a UUID4 string",
        "code": 400,
    }


@pytest.mark.parametrize("method, route", ID_ROUTES)
async def test_an_unknown_session_id_is_a_404_on_every_route(client, method, route):
    response = await client.request(
        method, route.format(id=UNKNOWN), json={"analysis_type": "highlights"}
    )
    body = await response.json()
    assert response.status == 404, body
    assert body == {
        "error": "Session not found",
        "message": "Session not found",
        "sessionId": UNKNOWN,
        "code": 404,
    }


async def test_status_and_its_progress_alias_answer_the_status_body(client, sample_video):
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, session_id)
    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    progress = await (await client.get(f"{V1}/progress/{session_id}")).json()
    assert status == progress
    assert set(status) == set(STATUS_KEYS)
    assert status["status"] == "completed" and status["progress"] == 1.0
    assert status["analysisType"] == "highlights" and status["queuePosition"] is None
    assert status["createdAt"].endswith("Z") and status["updatedAt"].endswith("Z")


async def test_an_uppercase_session_id_finds_the_same_session(client, sample_video):
    session_id = await upload_id(client, sample_video)
    response = await client.get(f"{V1}/status/{session_id.upper()}")
    assert response.status == 200 and (await response.json())["sessionId"] == session_id


async def test_results_of_a_completed_session_link_artifacts_by_api_url(client, sample_video):
    """Worker file names become API URLs; no server path appears anywhere in the body."""
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, session_id)
    response = await client.get(f"{V1}/results/{session_id}")
    body = await response.json()
    assert response.status == 200
    assert body["sessionId"] == session_id and body["status"] == "completed"
    results = body["results"]
    assert results["highlights"][0]["thumbnail"] == f"{V1}/results/{session_id}/thumbnails/0"
    assert results["reel"] == {"url": f"{V1}/results/{session_id}/reel", "duration_seconds": 2.0}
    assert str(client.app[keys.CONFIG].data_dir) not in await response.text()


async def test_results_before_completion_are_a_400_with_status_and_progress(client, sample_video):
    session_id = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(client, session_id)
    response = await client.get(f"{V1}/results/{session_id}")
    body = await response.json()
    assert response.status == 400
    assert body["error"] == "Results not ready" and body["code"] == 400
    assert body["status"] == "processing" and body["progress"] == 0.25


async def test_results_of_an_uploaded_session_are_not_ready(client, sample_video):
    session_id = await upload_id(client, sample_video)
    body = await (await client.get(f"{V1}/results/{session_id}")).json()
    assert body["code"] == 400 and body["status"] == "uploaded" and body["progress"] == 0.0


async def test_results_of_a_failed_session_are_a_500_with_the_reason(client, sample_video):
    session_id = await upload_id(client, sample_video, "fail.mp4", analysis_type="highlights")
    await finished(client, session_id)
    response = await client.get(f"{V1}/results/{session_id}")
    body = await response.json()
    assert response.status == 500
    assert body["error"] == "Analysis failed" and body["sessionId"] == session_id
    assert "the model saw no frames" in body["message"]


async def test_results_of_a_cancelled_session_are_a_400(client, sample_video):
    session_id = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await client.post(f"{V1}/cancel/{session_id}")
    response = await client.get(f"{V1}/results/{session_id}")
    body = await response.json()
    assert response.status == 400 and body["error"] == "Session was cancelled"


async def test_the_reel_is_an_mp4_and_range_requests_get_206_with_those_bytes(client, sample_video):
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, session_id)
    whole = await client.get(f"{V1}/results/{session_id}/reel")
    assert whole.status == 200 and whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Accept-Ranges"] == "bytes"
    data = await whole.read()
    assert data == sample_video.read_bytes()
    part = await client.get(f"{V1}/results/{session_id}/reel", headers={"Range": "bytes=100-199"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert await part.read() == data[100:200]


async def test_without_highlights_reel_is_null_and_its_url_a_404(client, sample_video):
    session_id = await upload_id(client, sample_video, "noreel.mp4", analysis_type="highlights")
    await finished(client, session_id)
    results = (await (await client.get(f"{V1}/results/{session_id}")).json())["results"]
    assert results["reel"] is None
    response = await client.get(f"{V1}/results/{session_id}/reel")
    assert response.status == 404 and (await response.json())["code"] == 404


async def test_a_thumbnail_is_a_jpeg_and_bad_indexes_are_404_or_400(client, sample_video):
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, session_id)
    thumbnails = f"{V1}/results/{session_id}/thumbnails"
    response = await client.get(f"{thumbnails}/0")
    assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
    assert (await response.read())[:2] == b"\xff\xd8"
    assert (await client.get(f"{thumbnails}/1")).status == 404
    assert (await client.get(f"{thumbnails}/99999999999999999999")).status == 404
    for bad in ("-1", "x", "1.0", "%C2%B2"):
        response = await client.get(f"{thumbnails}/{bad}")
        assert response.status == 400, bad
        assert (await response.json())["code"] == 400


async def test_artifacts_of_an_unfinished_session_answer_like_results(client, sample_video):
    session_id = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(client, session_id)
    for route in ("reel", "thumbnails/0"):
        body = await (await client.get(f"{V1}/results/{session_id}/{route}")).json()
        assert body["error"] == "Results not ready" and body["status"] == "processing"


async def test_cancel_answers_200_and_is_idempotent(client, sample_video):
    session_id = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(client, session_id)
    expected = {
        "sessionId": session_id,
        "status": "cancelled",
        "message": "Processing cancelled successfully",
    }
    for _ in range(2):
        response = await client.post(f"{V1}/cancel/{session_id}")
        assert response.status == 200 and await response.json() == expected
    assert (await until_status(client, session_id, "cancelled"))["status"] == "cancelled"


async def test_cancel_of_a_queued_job_takes_it_out_of_the_queue_and_its_step_says_so(
    aiohttp_client, tmp_path, sample_video
):
    """API.md: currentStep is a string in every status but uploaded and pending."""
    client = await start(aiohttp_client, tmp_path, max_concurrent_jobs=1)
    await upload_id(client, sample_video, "hang-1.mp4", analysis_type="highlights")
    queued = await upload_id(client, sample_video, "hang-2.mp4", analysis_type="highlights")
    status = await (await client.get(f"{V1}/status/{queued}")).json()
    assert status["status"] == "pending" and status["queuePosition"] == 1
    assert status["currentStep"] is None
    assert (await client.post(f"{V1}/cancel/{queued}")).status == 200
    health = await (await client.get("/health")).json()
    assert health["queued"] == 0
    status = await (await client.get(f"{V1}/status/{queued}")).json()
    assert status["status"] == "cancelled" and status["currentStep"] == "Cancelled while queued"


async def test_an_uploaded_session_cancelled_has_a_step(client, sample_video):
    session_id = await upload_id(client, sample_video)
    await client.post(f"{V1}/cancel/{session_id}")
    status = await (await client.get(f"{V1}/status/{session_id}")).json()
    assert status["status"] == "cancelled" and status["currentStep"] == "Cancelled"


async def test_cancel_of_a_completed_session_is_a_409_with_its_status(client, sample_video):
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, session_id)
    response = await client.post(f"{V1}/cancel/{session_id}")
    body = await response.json()
    assert response.status == 409 and body["status"] == "completed" and body["code"] == 409


async def test_cancel_of_a_failed_session_is_a_409(client, sample_video):
    session_id = await upload_id(client, sample_video, "fail.mp4", analysis_type="highlights")
    await finished(client, session_id)
    response = await client.post(f"{V1}/cancel/{session_id}")
    assert response.status == 409 and (await response.json())["status"] == "failed"


@pytest.mark.parametrize("route", ["cleanup", "session"])
async def test_cleanup_cancels_a_live_job_deletes_everything_and_then_404s(
    client, sample_video, tmp_path, route
):
    session_id = await upload_id(client, sample_video, "hang.mp4", analysis_type="highlights")
    await until_running(client, session_id)
    response = await client.delete(f"{V1}/{route}/{session_id}")
    assert response.status == 200
    assert await response.json() == {
        "sessionId": session_id,
        "message": "Session cleaned up successfully",
    }
    assert not (tmp_path / "data" / "uploads" / session_id).exists()
    assert not (tmp_path / "data" / "artifacts" / session_id).exists()
    assert (await client.get(f"{V1}/status/{session_id}")).status == 404
    assert (await client.delete(f"{V1}/{route}/{session_id}")).status == 404


async def test_cleanup_of_a_completed_session_removes_its_artifacts(client, sample_video, tmp_path):
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, session_id)
    assert (tmp_path / "data" / "artifacts" / session_id / "reel.mp4").is_file()
    assert (await client.delete(f"{V1}/cleanup/{session_id}")).status == 200
    assert not (tmp_path / "data" / "artifacts" / session_id).exists()
    assert (await client.get(f"{V1}/results/{session_id}/reel")).status == 404


async def test_analyze_with_a_json_body_starts_an_uploaded_session(client, sample_video):
    session_id = await upload_id(client, sample_video)
    response = await client.post(
        f"{V1}/analyze/{session_id}",
        json={"analysis_type": "workout", "params": {"exercise_hint": "squats"}},
    )
    body = await response.json()
    assert response.status == 202 and body["status"] == "pending"
    assert response.headers["Location"] == f"{V1}/status/{session_id}"
    session = await finished(client, session_id)
    assert session.status.value == "completed" and session.params["exercise_hint"] == "squats"


async def test_analyze_with_a_form_body_takes_params_as_a_json_string(client, sample_video):
    session_id = await upload_id(client, sample_video)
    response = await client.post(
        f"{V1}/analyze/{session_id}",
        data={"analysis_type": "highlights", "params": '{"min_significance": 7}'},
    )
    assert response.status == 202
    assert (await finished(client, session_id)).params["min_significance"] == 7


async def test_analyze_of_a_session_that_already_ran_is_a_409(client, sample_video):
    session_id = await upload_id(client, sample_video, analysis_type="highlights")
    response = await client.post(f"{V1}/analyze/{session_id}", json={"analysis_type": "workout"})
    assert response.status == 409 and (await response.json())["code"] == 409


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "analysis_type is required"),
        ({"analysis_type": "dance"}, "highlights or workout"),
        ({"analysis_type": "workout", "params": {"colour": 1}}, "allowed: exercise_hint"),
        ({"analysis_type": "workout", "params": "[1]"}, "JSON object"),
        ({"analysis_type": "highlights", "params": {"min_significance": 11}}, "from 1 to 10"),
    ],
)
async def test_analyze_with_bad_input_is_a_400_saying_what_to_fix(
    client, sample_video, body, fragment
):
    session_id = await upload_id(client, sample_video)
    response = await client.post(f"{V1}/analyze/{session_id}", json=body)
    answer = await response.json()
    assert response.status == 400 and fragment in answer["message"], answer
    assert (await client.get(f"{V1}/status/{session_id}")).status == 200


async def test_analyze_with_a_body_that_is_not_json_is_a_400(client, sample_video):
    session_id = await upload_id(client, sample_video)
    response = await client.post(
        f"{V1}/analyze/{session_id}", data="{oops", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400 and (await response.json())["code"] == 400


async def test_the_list_is_newest_first_and_filters_by_status_and_limit(client, sample_video):
    first = await upload_id(client, sample_video)
    second = await upload_id(client, sample_video, analysis_type="highlights")
    await finished(client, second)
    third = await upload_id(client, sample_video)

    body = await (await client.get(f"{V1}/sessions")).json()
    assert [s["sessionId"] for s in body["sessions"]] == [third, second, first]
    assert body["count"] == 3

    uploaded = await (await client.get(f"{V1}/sessions?status=uploaded")).json()
    assert [s["sessionId"] for s in uploaded["sessions"]] == [third, first]
    limited = await (await client.get(f"{V1}/sessions?limit=1")).json()
    assert limited == {"sessions": [body["sessions"][0]], "count": 1}


@pytest.mark.parametrize("query", ["status=done", "limit=0", "limit=-1", "limit=x", "limit=1001"])
async def test_the_list_validates_status_and_limit(client, query):
    response = await client.get(f"{V1}/sessions?{query}")
    assert response.status == 400 and (await response.json())["code"] == 400
