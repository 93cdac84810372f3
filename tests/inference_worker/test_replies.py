"""Messy small-model replies: read what is there, return None for garbage, never raise."""

import random

import pytest

from inference_worker.replies import (
    MAX_CRITERIA,
    MAX_DESCRIPTION_CHARS,
    MAX_FORM_NOTE_CHARS,
    parse_criteria,
    parse_description,
    parse_exercise,
    parse_form_notes,
    parse_reps,
    parse_significance,
    strip_echo,
)

GARBAGE = [
    "",
    "   \n\t ",
    None,
    42,
    "<end_of_utterance>",
    "<|im_end|><image><fake_token_around_image>",
    "😀😀😀🔥🔥",
    "ẞ∂ƒ©˙∆˚¬",
    "漢字テスト",
    "\x00\x01\x02\ufeff\u200b",
    "...!!!???",
    "the the the the the the the the",
    "N/A",
    "I don't know.",
    "{not json: [",
    "Score: <number from 1 to 10>\nDescription: <one sentence about the main action>",
    "x" * 100_000,
]
PARSERS = [
    parse_significance,
    parse_description,
    parse_criteria,
    parse_exercise,
    parse_reps,
    parse_form_notes,
]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("reply", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_gives_nothing_and_never_raises(parse, reply):
    assert parse(reply) in (None, [])


# ---- significance ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, score",
    [
        ("8", 8),
        ("  8.  ", 8),
        ("Score: 8", 8),
        ("Score: 8/10", 8),
        ("**Score:** 8/10\nDescription: a goal", 8),
        ("8 out of 10", 8),
        ("I'd give it 7 out of ten.", 7),
        ("significance=7", 7),
        ("Significance: seven", 7),
        ("eight", 8),
        ("Eight. A goal is scored.", 8),
        ("Ten!", 10),
        ('{"significance": 9, "description": "A save"}', 9),
        ('```json\n{"score": "6/10"}\n```', 6),
        ("{'score': 5, 'description': 'kick-off'}", 5),
        ("The score for this segment is 7.", 7),
        ("I'd rate it a 6.", 6),
        ("On a scale of 1 to 10, the score is 9.", 9),
        ("Rating (1-10): 3", 3),
        ("Score: 7.5", 8),
        ("Score: 7.4", 7),
        ("4/5", 8),
        ("80%", 8),
        ("Score: 0", 1),
        ("0/10", 1),
        ("12/10", 10),
        ("Significance: high", 8),
        ("Significance: low", 2),
        ("8 8 8 8 8 8 8 8", 8),
        ("Assistant: Score: 6", 6),
        ("User: rate it\nAssistant: 4", 4),
        ("８", 8),
        ("Score:\n\n9", 9),
    ],
)
def test_significance_is_read_from_many_ways_of_writing_a_score(reply, score):
    assert parse_significance(reply) == score


@pytest.mark.parametrize(
    "reply",
    [
        "Score: 15",  # not on the scale, and not rescalable
        "Score: -3",
        "2024",
        "3 players run towards the goal",  # a count in prose is not a score
        "Rate this from 1 to 10",  # the echoed range is not an answer
        "Score: <1-10>",
        "One player kicks the ball.",
        "Score: unknown",
    ],
)
def test_significance_rejects_numbers_that_are_not_a_score(reply):
    assert parse_significance(reply) is None


# ---- descriptions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, description",
    [
        ("Score: 8\nDescription: A player scores a goal.", "A player scores a goal."),
        ("Description: a player scores a goal", "A player scores a goal."),
        ("Score: 8. A player shoots and scores.", "A player shoots and scores."),
        ("8/10 - the keeper makes a diving save", "The keeper makes a diving save."),
        ('{"score": 7, "description": "A red card is shown"}', "A red card is shown."),
        ("Sure! A dog catches a frisbee. Then it runs away.", "A dog catches a frisbee."),
        ("A man runs. A man runs. A man runs.", "A man runs."),
        ("a man runs a man runs a man runs a man runs", "A man runs."),
        ("goal goal goal goal goal", "Goal."),
        ("Description:\nThe crowd cheers loudly.", "The crowd cheers loudly."),
        ("Description: <one sentence>\nDescription: A cyclist falls.", "A cyclist falls."),
        ("- A cat jumps onto the table", "A cat jumps onto the table."),
        ("Assistant: The car drifts around the corner!", "The car drifts around the corner!"),
        ("Description: “A header into the net”", "A header into the net."),
    ],
)
def test_description_is_the_one_sentence_the_model_meant(reply, description):
    assert parse_description(reply) == description


@pytest.mark.parametrize(
    "reply",
    [
        "Score: 8",
        "8/10",
        "Eight.",
        "Score: 7\nDescription:",
        "Description: N/A",
        "Yes.",
        "The video.",
    ],
)
def test_description_is_none_when_only_a_score_or_filler_is_given(reply):
    assert parse_description(reply) is None


def test_description_is_capped_at_a_word_boundary():
    reply = "Description: " + " ".join(f"runner{i} passes" for i in range(60))
    description = parse_description(reply)
    assert len(description) <= MAX_DESCRIPTION_CHARS and description.endswith("…")
    assert description[:-1].split()[-1] in {f"runner{i}" for i in range(60)} | {"passes"}


def test_several_sentences_can_be_asked_for():
    reply = "This is a soccer match. Two teams play. A goal is scored. The crowd cheers."
    assert parse_description(reply, max_sentences=3) == (
        "This is a soccer match. Two teams play. A goal is scored."
    )


# ---- criteria ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, criteria",
    [
        ("- goals\n- saves\n- red cards", ["goals", "saves", "red cards"]),
        ("* Goals\n* Saves", ["Goals", "Saves"]),
        ("• goals\n• saves", ["goals", "saves"]),
        (
            "1. A goal is scored\n2) A penalty save\n3: A red card",
            ["A goal is scored", "A penalty save", "A red card"],
        ),
        ("1. Goal 2. Save 3. Foul", ["Goal", "Save", "Foul"]),
        ("goals, saves, and red cards", ["goals", "saves", "red cards"]),
        ("Highlights: goals; saves; fouls", ["goals", "saves", "fouls"]),
        ('["goal", "save", 3]', ["goal", "save"]),
        ("Here are some highlight moments:\n- A goal.\n- A save!", ["A goal", "A save"]),
        ("**Goals**\n**Saves**", ["Goals", "Saves"]),
        ("- goal\n- Goal\n- GOAL.\n- save", ["goal", "save"]),
        ("- goal goal goal goal\n- save", ["goal", "save"]),
        ("- \n- ...\n- N/A\n- a trick shot", ["a trick shot"]),
    ],
)
def test_criteria_are_read_from_bulleted_numbered_json_and_comma_lists(reply, criteria):
    assert parse_criteria(reply) == criteria


def test_criteria_are_capped_in_number_and_length():
    reply = "\n".join(f"- moment number {word}" for word in "abcdefghijkl") + "\n- " + "x " * 200
    criteria = parse_criteria(reply)
    assert len(criteria) == MAX_CRITERIA
    assert parse_criteria(reply, limit=2) == ["moment number a", "moment number b"]
    assert all(len(c) <= 80 for c in parse_criteria("- " + "very long words " * 30))


# ---- exercise ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, exercise",
    [
        ("Squats", "squat"),
        ("squat", "squat"),
        ("Air squat", "squat"),
        ("Exercise: air squats", "squat"),
        ("Push ups", "push-up"),
        ("pushup", "push-up"),
        ("Exercise: Push-Ups\nReps: 10", "push-up"),
        ("press-ups", "push-up"),
        ("pull ups", "pull-up"),
        ("Lunges", "lunge"),
        ("jumping jacks", "jumping jack"),
        ("Exercise: Burpees", "burpee"),
        ("The person is doing squats and completed twelve reps.", "squat"),
        ('{"exercise": "Bench Press", "reps": 5}', "bench press"),
        ("Exercise: Kettlebell swings", "kettlebell swing"),
        ("Exercise: yoga flows", "yoga flow"),
        ("Exercise: Box jumps", "box jump"),
        ("rest", "rest"),
        ("Resting", "rest"),
        ("Exercise: rest", "rest"),
        ("No exercise", "rest"),
        ("The person is not exercising.", "rest"),
        ("standing", "rest"),
        ("Exercise: none", "rest"),
        ("Exercise: standing calf raises", "calf raise"),
    ],
)
def test_exercise_names_are_normalised_to_one_lowercase_singular_name(reply, exercise):
    assert parse_exercise(reply) == exercise


@pytest.mark.parametrize(
    "reply",
    [
        "A man in a red shirt is jumping on a trampoline in the garden",
        "Reps: 10",
        "Exercise: 3 sets",
        "Exercise: unknown",
    ],
)
def test_exercise_is_none_when_no_exercise_is_named(reply):
    assert parse_exercise(reply) is None


# ---- reps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, reps",
    [
        ("12 reps", 12),
        ("Reps: 12", 12),
        ("reps=12", 12),
        ("Reps: about 12 (hard to tell)", 12),
        ("twelve", 12),
        ("Reps: twelve", 12),
        ("twenty-five repetitions", 25),
        ("Reps: twenty one", 21),
        ("x10", 10),
        ("10x", 10),
        ("3x10", 30),
        ("They did it 8 times.", 8),
        ("no reps", 0),
        ("Reps: none", 0),
        ("Reps: 0", 0),
        ("Exercise: squat\nReps: 10\nForm: good", 10),
        ('{"exercise": "squat", "reps": 7}', 7),
        ("7", 7),
        ("Reps: 12.7", 12),
    ],
)
def test_reps_are_read_from_counts_words_and_multipliers(reply, reps):
    assert parse_reps(reply) == reps


@pytest.mark.parametrize(
    "reply",
    ["-5 reps", "1000 reps", "Reps: N/A", "Exercise: squat", "The person squats for 10 seconds"],
)
def test_reps_are_none_when_no_plausible_count_is_given(reply):
    assert parse_reps(reply) is None


# ---- form notes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, note",
    [
        ("Exercise: squat\nReps: 10\nForm: keep your back straight", "Keep your back straight."),
        ("Form notes: knees cave in slightly.", "Knees cave in slightly."),
        ('{"form_notes": "Good depth"}', "Good depth."),
        ("Squats. 10 reps. Knees cave in slightly.", "Knees cave in slightly."),
        ("Exercise: squat\nReps: 10\nGood posture throughout.", "Good posture throughout."),
    ],
)
def test_form_notes_are_the_form_field_or_the_sentence_about_technique(reply, note):
    assert parse_form_notes(reply) == note


@pytest.mark.parametrize(
    "reply", ["Exercise: squat\nReps: 10", "Form: N/A", "Form: <one short note>"]
)
def test_form_notes_are_none_when_nothing_is_said_about_form(reply):
    assert parse_form_notes(reply) is None


def test_form_notes_are_short():
    note = parse_form_notes("Form: " + "keep the chest up and " * 20)
    assert len(note) <= MAX_FORM_NOTE_CHARS


# ---- prompt echoes -----------------------------------------------------------------------


def test_lines_echoed_from_the_prompt_are_dropped_before_parsing():
    prompt = "The whole video: A soccer match between two teams.\nHow significant is this part?"
    reply = (
        "The whole video: a soccer match between two teams.\n"
        "  How significant is this part?\n"
        "A goal."
    )
    assert strip_echo(reply, prompt) == "A goal."
    assert parse_description(strip_echo(reply, prompt)) == "A goal."


def test_short_answers_are_not_mistaken_for_echoes():
    assert strip_echo("Score: 7", "Score: 7\nSomething else entirely") == "Score: 7"
    assert strip_echo(None, "prompt") == ""


def test_random_text_never_makes_a_parser_raise():
    """Seeded fuzz over labels, digits, punctuation and assorted unicode."""
    rng = random.Random(20250930)
    alphabet = list("0123456789 \n\t.,:;-/%*#{}[]\"'<>xX") + [
        "Score:",
        "Reps:",
        "Description:",
        "Exercise:",
        "Form:",
        "eight",
        "twenty-",
        "out of",
        "Assistant:",
        "é",
        "ß",
        "\u2212",
        "\u2022",
        "😀",
        "漢",
        "\ufffd",
        "\u200b",
        "\x00",
    ]
    for _ in range(500):
        reply = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        results = [parse(reply) for parse in PARSERS]
        score, description, criteria, exercise, reps, note = results
        assert score is None or 1 <= score <= 10
        assert reps is None or 0 <= reps
        assert all(isinstance(r, str) for r in (description, exercise, note) if r is not None)
        assert isinstance(criteria, list)
