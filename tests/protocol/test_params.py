"""Params validation: defaults, types, ranges, unknown keys; messages that say what to fix."""

import pytest

from protocol import (
    SCHEMAS,
    AnalysisType,
    ParamsError,
    params_from_form,
    parse_analysis_type,
    parse_params_json,
    validate_params,
)

H, W = AnalysisType.HIGHLIGHTS, AnalysisType.WORKOUT


def test_defaults_are_filled_in():
    assert validate_params(H, {}) == {
        "min_significance": 4,
        "segment_seconds": 10.0,
        "max_highlights": 10,
        "make_reel": True,
        "frames_per_segment": 4,
    }
    assert validate_params(W, None) == {
        "segment_seconds": 10.0,
        "frames_per_segment": 4,
        "exercise_hint": None,
    }


def test_given_values_are_kept_and_normalised():
    checked = validate_params(
        H, {"min_significance": 7.0, "segment_seconds": 5, "make_reel": False}
    )
    assert checked["min_significance"] == 7 and isinstance(checked["min_significance"], int)
    assert checked["segment_seconds"] == 5.0 and isinstance(checked["segment_seconds"], float)
    assert checked["make_reel"] is False
    assert validate_params(W, {"exercise_hint": "  squats "})["exercise_hint"] == "squats"


def test_unknown_keys_name_the_allowed_ones():
    with pytest.raises(ParamsError) as info:
        validate_params(W, {"min_significance": 4, "colour": "red"})
    message = str(info.value)
    assert "'colour'" in message and "'min_significance'" in message
    assert "allowed: exercise_hint, frames_per_segment, segment_seconds" in message


@pytest.mark.parametrize(
    "params, key",
    [
        ({"min_significance": 0}, "min_significance"),
        ({"min_significance": 11}, "min_significance"),
        ({"min_significance": 4.5}, "min_significance"),
        ({"min_significance": "4"}, "min_significance"),
        ({"min_significance": True}, "min_significance"),
        ({"segment_seconds": 0.5}, "segment_seconds"),
        ({"segment_seconds": 1e9}, "segment_seconds"),
        ({"segment_seconds": float("nan")}, "segment_seconds"),
        ({"segment_seconds": float("inf")}, "segment_seconds"),
        ({"max_highlights": 0}, "max_highlights"),
        ({"make_reel": "yes"}, "make_reel"),
        ({"make_reel": 1}, "make_reel"),
        ({"frames_per_segment": 17}, "frames_per_segment"),
        ({"frames_per_segment": None}, "frames_per_segment"),
    ],
)
def test_wrong_types_and_ranges_name_the_key_and_the_rule(params, key):
    with pytest.raises(ParamsError, match=f"^{key} must be"):
        validate_params(H, params)


def test_hint_must_be_short_text():
    with pytest.raises(ParamsError, match="exercise_hint must be a string of at most 200"):
        validate_params(W, {"exercise_hint": "x" * 201})
    with pytest.raises(ParamsError, match="exercise_hint"):
        validate_params(W, {"exercise_hint": 5})
    assert validate_params(W, {"exercise_hint": None})["exercise_hint"] is None


def test_params_must_be_an_object():
    with pytest.raises(ParamsError, match="JSON object"):
        validate_params(H, [1, 2])


def test_params_json_field():
    assert parse_params_json(None) == {}
    assert parse_params_json("  ") == {}
    assert parse_params_json('{"make_reel": false}') == {"make_reel": False}
    with pytest.raises(ParamsError, match="not valid JSON"):
        parse_params_json("{make_reel: false}")
    with pytest.raises(ParamsError, match="JSON object"):
        parse_params_json("[1]")


def test_form_fields_are_read_as_scalars_where_they_are_one():
    params = params_from_form(
        {"min_significance": "4", "make_reel": "false", "exercise_hint": "squats", "x": "[1]"}
    )
    assert params == {
        "min_significance": 4,
        "make_reel": False,
        "exercise_hint": "squats",
        "x": "[1]",
    }


def test_analysis_type_names():
    assert parse_analysis_type("workout") is W
    with pytest.raises(ParamsError, match="use highlights or workout"):
        parse_analysis_type("dance")


def test_every_schema_default_passes_its_own_check():
    for analysis_type, schema in SCHEMAS.items():
        explicit = {spec.name: spec.default for spec in schema if spec.default is not None}
        assert validate_params(analysis_type, explicit) == validate_params(analysis_type, {})
