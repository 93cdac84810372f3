"""Round-trips of every message, and garbage lines that must become values, not crashes."""

import json

import pytest

from protocol import (
    AnalysisType,
    Error,
    InvalidLine,
    JobSpec,
    Log,
    LogLevel,
    ModelReport,
    ModelState,
    Partial,
    PartialKind,
    ProbeRequest,
    Progress,
    ProtocolError,
    Result,
    TimelineEntry,
    VideoInfo,
    WorkoutSegment,
    decode_event,
    decode_job,
    decode_probe_request,
    encode_event,
    encode_job,
    encode_probe_request,
    is_terminal,
)

JUDGED = TimelineEntry(
    start=10.0,
    end=20.0,
    start_time="00:10",
    end_time="00:20",
    significance=7,
    description="A shot on goal.",
)
EVENTS = [
    Progress(0.42, "Analyzing segment 5/12"),
    Partial(PartialKind.TIMELINE, JUDGED),
    Log(LogLevel.WARNING, "slow disk"),
    Result({"analysisType": "highlights", "highlights": []}),
    Error("invalid_video", "no video stream"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_every_event_round_trips_as_one_json_line(event):
    line = encode_event(event)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line)["type"] == event.type
    assert decode_event(line) == event
    assert decode_event(line.encode()) == event


def test_wire_format_matches_the_documented_lines():
    assert json.loads(encode_event(Progress(0.42, "Analyzing segment 5/12"))) == {
        "type": "progress",
        "progress": 0.42,
        "step": "Analyzing segment 5/12",
    }
    assert json.loads(encode_event(Log(LogLevel.INFO, "hi"))) == {
        "type": "log",
        "level": "info",
        "message": "hi",
    }


def test_a_partial_names_the_results_list_its_item_belongs_to():
    segment = WorkoutSegment(
        start=0.0,
        end=30.0,
        start_time="00:00",
        end_time="00:30",
        exercise="squat",
        reps=12,
        form_notes="steady",
    )
    line = encode_event(Partial(PartialKind.SEGMENTS, segment))
    assert json.loads(line) == {
        "type": "partial",
        "kind": "segments",
        "item": {
            "start": 0.0,
            "end": 30.0,
            "start_time": "00:00",
            "end_time": "00:30",
            "exercise": "squat",
            "reps": 12,
            "form_notes": "steady",
        },
    }


def test_a_partial_item_is_decoded_as_the_type_of_the_list_it_names():
    line = encode_event(Partial(PartialKind.TIMELINE, JUDGED))
    assert json.loads(line)["item"]["significance"] == 7
    highlight = decode_event(line.replace('"timeline"', '"highlights"'))
    assert isinstance(highlight, Partial) and highlight.kind is PartialKind.HIGHLIGHTS
    assert type(highlight.item).__name__ == "HighlightFound"
    assert highlight.item.description == "A shot on goal."


def test_a_partial_item_that_breaks_its_type_is_an_invalid_line_saying_what():
    item = {**json.loads(encode_event(Partial(PartialKind.TIMELINE, JUDGED)))["item"]}
    item["significance"] = 11
    decoded = decode_event(json.dumps({"type": "partial", "kind": "timeline", "item": item}))
    assert isinstance(decoded, InvalidLine)
    assert "<= 10" in decoded.reason and "significance" in decoded.reason


def test_only_result_and_error_are_terminal():
    assert [is_terminal(e) for e in EVENTS] == [False, False, False, True, True]


GARBAGE = [
    "",
    "hello world",
    "Traceback (most recent call last):",
    "[1, 2, 3]",
    '"a string"',
    '{"no": "type"}',
    '{"type": "teleport"}',
    '{"type": "progress"}',
    '{"type": "progress", "progress": 1.5, "step": "x"}',
    '{"type": "progress", "progress": -0.1, "step": "x"}',
    '{"type": "progress", "progress": "half", "step": "x"}',
    '{"type": "progress", "progress": true, "step": "x"}',
    '{"type": "progress", "progress": NaN, "step": "x"}',
    '{"type": "progress", "progress": Infinity, "step": "x"}',
    '{"type": "partial", "kind": "highlights", "item": [1]}',
    '{"type": "partial", "item": {"start": 0.0}}',
    '{"type": "partial", "kind": "chapters", "item": {"start": 0.0}}',
    '{"type": "partial", "kind": "timeline", "item": {"start": 0.0, "end": 10.0}}',
    '{"type": "result", "results": null}',
    '{"type": "error", "error": 3, "message": "x"}',
    '{"type": "log", "level": "shout", "message": "x"}',
    '{"type": "log", "level": "info"',
    "\x00\x01\x02",
    "{" * 5000,
]


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_lines_decode_to_invalid_line_values(line):
    decoded = decode_event(line)
    assert isinstance(decoded, InvalidLine)
    assert decoded.reason
    assert len(decoded.line) <= 200


def test_undecodable_bytes_are_an_invalid_line():
    assert isinstance(decode_event(b"\xff\xfe{not json"), InvalidLine)


def test_encode_refuses_nan_so_lines_stay_json():
    with pytest.raises(ValueError):
        encode_event(Progress(float("nan"), "x"))


def test_job_spec_round_trips():
    spec = JobSpec(
        session_id="abc",
        analysis_type=AnalysisType.WORKOUT,
        video_path="/data/uploads/abc/video.mp4",
        output_dir="/data/artifacts/abc",
        model="mlx-community/SmolVLM2-500M-Video-Instruct-mlx",
        params={"segment_seconds": 5.0},
        filename="gym.mp4",
    )
    line = encode_job(spec)
    assert line.count("\n") == 1
    assert decode_job(line) == spec


def test_job_spec_carries_the_servers_probe_and_older_specs_decode_without_it():
    info = VideoInfo("gym.mp4", 61.5, 1920, 1080, 29.97, rotation=90, has_audio=True)
    spec = JobSpec("abc", AnalysisType.HIGHLIGHTS, "v.mp4", "out", "m", video_info=info)

    assert decode_job(encode_job(spec)).video_info == info
    older = '{"session_id": "a", "analysis_type": "workout", "video_path": "v", '
    older += '"output_dir": "o", "model": "m"}'
    assert decode_job(older).video_info is None


@pytest.mark.parametrize(
    "line, complaint",
    [
        ("nope", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"session_id": "a"}', "missing"),
        (
            '{"session_id": "a", "analysis_type": "dance", "video_path": "v", '
            '"output_dir": "o", "model": "m"}',
            "unknown analysis_type",
        ),
        (
            '{"session_id": "a", "analysis_type": "workout", "video_path": "v", '
            '"output_dir": "o", "model": "m", "params": []}',
            "params must be an object",
        ),
        (
            '{"session_id": "a", "analysis_type": "workout", "video_path": "v", '
            '"output_dir": "o", "model": "m", "video_info": {"width": 2}}',
            "video_info is not a probe result",
        ),
    ],
)
def test_bad_job_specs_say_what_is_wrong(line, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        decode_job(line)


def test_model_display_name_never_shows_a_server_path(tmp_path):
    from protocol import model_display_name

    assert model_display_name("mlx-community/SmolVLM2-500M-Video-Instruct-mlx") == (
        "mlx-community/SmolVLM2-500M-Video-Instruct-mlx"
    )
    local = tmp_path / "models" / "tiny-smolvlm2"
    local.mkdir(parents=True)
    assert model_display_name(str(local)) == "tiny-smolvlm2"
    assert model_display_name(str(local) + "/") == "tiny-smolvlm2"
    assert model_display_name("/opt/missing/weights") == "weights"


def test_json_nested_too_deeply_is_an_invalid_line_not_a_crash():
    decoded = decode_event("[" * 100_000 + "]" * 100_000)
    assert isinstance(decoded, InvalidLine) and "nested" in decoded.reason


SPEC_FIELDS = {
    "session_id": "s",
    "analysis_type": "workout",
    "video_path": "/v.mp4",
    "output_dir": "/out",
    "model": "m",
}


@pytest.mark.parametrize(
    "video",
    ["x", [], {"filename": "a"}, {"filename": "a", "duration_seconds": "long", "width": 1}],
)
def test_a_malformed_video_info_is_a_protocol_error(video):
    with pytest.raises(ProtocolError, match="video_info is not a probe result"):
        decode_job(json.dumps({**SPEC_FIELDS, "video_info": video}))


def test_model_reports_round_trip_with_their_state():
    for report in (ModelReport(ModelState.READY), ModelReport(ModelState.UNAVAILABLE, "gone")):
        assert decode_event(encode_event(report)) == report
    assert isinstance(decode_event('{"type":"model","state":"sleepy"}'), InvalidLine)


def test_probe_requests_round_trip_and_bad_ones_say_what_is_wrong():
    request = ProbeRequest("/data/uploads/x/source.mp4", "match.mp4")
    assert decode_probe_request(encode_probe_request(request)) == request
    for bad in (
        "nope",
        "[]",
        '{"filename": "a"}',
        '{"path": "/p", "filename": 3}',
        '{"path": "/p", "size": -1}',
        '{"path": "/p", "size": 1.5}',
        '{"path": "/p", "size": true}',
    ):
        with pytest.raises(ProtocolError, match="probe request"):
            decode_probe_request(bad)


def test_a_probe_request_for_a_url_carries_the_objects_size():
    request = ProbeRequest("https://bucket.example/uploads/x/source.mp4?X-Amz-Signature=s", "", 123)
    assert decode_probe_request(encode_probe_request(request)) == request


def test_a_probe_request_without_a_size_reads_and_writes_as_before_sizes_existed():
    """Lines of the two versions mean the same: no `size` key is a size of None."""
    line = '{"path":"/data/uploads/x/source.mp4","filename":"match.mp4"}\n'
    request = decode_probe_request(line)
    assert request == ProbeRequest("/data/uploads/x/source.mp4", "match.mp4", None)
    assert encode_probe_request(request) == line
