"""Reading what a small vision-language model answered, however it answered.

A 500M-parameter model does not follow formats reliably: it echoes the prompt, wraps
answers in markdown or JSON, writes numbers as words, repeats itself, or returns nothing.
Every function here takes the raw reply, never raises, and returns None (or an empty list)
when nothing usable is in it, so the analyses can fall back instead of failing.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

# Replies are bounded by max_tokens; anything longer is runaway output, and the regular
# expressions below should never see an unbounded string.
_MAX_INPUT = 4000
MAX_CRITERIA = 6
MAX_CRITERION_CHARS = 80
MAX_DESCRIPTION_CHARS = 200
MAX_FORM_NOTE_CHARS = 120
# More repetitions than this in one segment (at most 300 s) is a misread, not a count.
MAX_REPS = 500
# Prompt lines shorter than this ("Score: 7") may legitimately appear in an answer.
_MIN_ECHO_CHARS = 12

# ---- numbers -----------------------------------------------------------------------------

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_VALUES = {word: value for value, word in enumerate(_UNITS)} | {
    word: 10 * (value + 2) for value, word in enumerate(_TENS)
}
_WORD_NUMBER = (
    rf"(?:(?:{'|'.join(_TENS)})(?:[\s-]+(?:{'|'.join(_UNITS[1:10])}))?|{'|'.join(_UNITS)})"
)
_DIGITS = r"\d+(?:\.\d+)?"


def _num(group: str = "num") -> str:
    """A number written in digits or words, as a named group, not part of a longer word."""
    return rf"(?<![\w.])(?P<{group}>{_DIGITS}|{_WORD_NUMBER})(?!\w)"


def _to_number(token: str) -> float:
    token = token.lower()
    if token[0].isdigit():
        return float(token)
    return float(sum(_WORD_VALUES[word] for word in re.split(r"[\s-]+", token) if word))


def _is_negative(text: str, start: int) -> bool:
    """True when the number at `start` carries a minus sign (not a range like 10-12)."""
    before = text[:start].rstrip(" ")
    if not before.endswith(("-", "\u2212")):
        return False
    return not before[:-1].rstrip()[-1:].isdigit()


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


# ---- cleaning ----------------------------------------------------------------------------

# Special tokens (<end_of_utterance>) and echoed template placeholders (<number>).
_TAG = re.compile(r"<[^<>\n]{0,40}>")
_SPEAKER = re.compile(r"(?i)\bassistant\s*:")
_MARKDOWN = re.compile(r"(?m)\*\*|__|`+|^\s*#+\s*|^\s*>\s*")
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u2060\ufeff]")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'"})
_REPEATED_WORD = re.compile(r"(?i)\b(\w+)(?:\W+\1\b){2,}")
_REPEATED_PHRASE = re.compile(r"(?is)\b(.{4,60}?)(?:\s*\1){2,}")


def _clean(reply: object) -> str:
    """The reply as plain text: no special tokens, chat prefixes, markdown or loops."""
    if not isinstance(reply, str):
        return ""
    text = unicodedata.normalize("NFKC", reply[:_MAX_INPUT]).translate(_QUOTES)
    text = _INVISIBLE.sub("", _TAG.sub(" ", text))
    text = _SPEAKER.split(text)[-1]
    return _collapse_repeats(_MARKDOWN.sub("", text)).strip()


def _collapse_repeats(text: str) -> str:
    """A model stuck in a loop ("goal goal goal", "a man runs a man runs …") said it once."""
    return _REPEATED_PHRASE.sub(r"\1", _REPEATED_WORD.sub(r"\1", text))


def strip_echo(reply: object, prompt: str) -> str:
    """The reply without lines that repeat a line of the prompt."""
    if not isinstance(reply, str):
        return ""
    echoed = {_norm(line) for line in prompt.splitlines() if len(_norm(line)) >= _MIN_ECHO_CHARS}
    return "\n".join(line for line in reply.splitlines() if _norm(line) not in echoed)


def _norm(line: str) -> str:
    return " ".join(line.lower().split())


# ---- labelled fields ("Score: 8", {"reps": 12}) -----------------------------------------

_LABELS = (
    "score",
    "significance",
    "rating",
    "importance",
    "description",
    "summary",
    "event",
    "exercise",
    "activity",
    "movement",
    "reps",
    "repetitions",
    "rep count",
    "count",
    "form notes",
    "form_notes",
    "form",
    "notes",
    "note",
    "feedback",
    "technique",
)
_LABEL_AT = re.compile(
    r"(?im)(?:^|(?<=[\s{,;]))[\"']?("
    + "|".join(re.escape(label) for label in sorted(_LABELS, key=len, reverse=True))
    + r")[\"']?\s*[:=]"
)
_FIELD_TRIM = "\"',{}[] \t\r\n"


def _json_between(text: str, opening: str, closing: str) -> Any:
    """The JSON value from the first `opening` to the last `closing`, or None."""
    start, end = text.find(opening), text.rfind(closing)
    if start < 0 or end <= start:
        return None
    try:
        return json.loads(text[start : end + 1])
    except ValueError:
        return None


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in the reply, with lower-case keys, if there is one."""
    data = _json_between(text, "{", "}")
    return {str(k).lower(): v for k, v in data.items()} if isinstance(data, dict) else None


def _field(text: str, names: tuple[str, ...]) -> str | None:
    """The first non-empty value labelled with one of `names` ("Reps: 12" -> "12")."""
    data = _json_object(text)
    if data is not None:
        for name in names:
            value = data.get(name)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                if str(value).strip():
                    return str(value).strip()
    marks = list(_LABEL_AT.finditer(text))
    for i, mark in enumerate(marks):
        if mark.group(1).lower() not in names:
            continue
        value = text[mark.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)]
        lines = [line.strip(_FIELD_TRIM) for line in value.splitlines()]
        first = next((line for line in lines if line), "")
        if first:
            return first
    return None


def _head(text: str) -> str:
    """The text before its first label: where an unlabelled answer comes first."""
    mark = _LABEL_AT.search(text)
    return text[: mark.start()] if mark else text


# ---- prose (descriptions, notes) ---------------------------------------------------------

_FILLER_WORDS = frozenset(
    "a an the and or of to in on is it this that yes no none nothing n/a na null nil "
    "unknown sure ok okay here answer description score significance not applicable "
    "i i'd i'm would say rate rated rating give don't know video segment frame frames".split()
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LEADING_JUNK = re.compile(r"^[\s\-*\u2022\u00b7\"'(\[:,;.!?]+|^\d{1,2}[.)]\s+")
_ASCII_WORD = re.compile(r"[A-Za-z][A-Za-z'/-]*[A-Za-z]")
# Words have vowels; "xxxx" and "qwrtz" are a model stuck on a token, not an answer.
_VOWEL = re.compile(r"[aeiouy]")
# Where the model wrote something half-structured, like "{" or "[", around its answer.
_BRACKETS = "{}[]\"' "


def _usable(sentence: str) -> bool:
    """Says something: a real word (ASCII letters; prompts are English), not only filler."""
    if sentence.rstrip().endswith(":"):
        return False  # an introduction ("Here is the answer:"), not the answer
    words = [w.lower() for w in _ASCII_WORD.findall(sentence)]
    return any(word not in _FILLER_WORDS and _VOWEL.search(word) for word in words)


def _shorten(text: str, limit: int, ellipsis: str = "…") -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - len(ellipsis)].rsplit(" ", 1)[0].rstrip(" ,;:-")
    return cut + ellipsis


def _prose(text: str | None, max_sentences: int, max_chars: int) -> str | None:
    """Up to `max_sentences` usable sentences of `text`, tidied and at most `max_chars`."""
    if not text:
        return None
    chosen = []
    for piece in _SENTENCE_END.split(text):
        sentence = " ".join(_LEADING_JUNK.sub("", piece.strip(_BRACKETS)).split()).strip(_BRACKETS)
        if sentence and _usable(sentence):
            chosen.append(sentence)
        if len(chosen) == max_sentences:
            break
    if not chosen:
        return None
    result = _shorten(" ".join(chosen), max_chars)
    if result[-1] not in ".!?…":
        result += "."
    return result[0].upper() + result[1:]


# ---- significance ------------------------------------------------------------------------

_SCORE_LABEL = (
    r"(?:significance|score|rating|rated|rate|importance"
    r"|(?:give|gave|rate|rated)\s+(?:it|this)|i'd\s+say|i\s+would\s+say)"
)
_SCALE = r"(?:\s*(?:/|out\s+of|of)\s*(?P<scale>\d+|ten|five|hundred)\b)?(?P<pct>\s*%|\s+percent)?"
_RANGE = re.compile(
    r"(?i)\b(?:(?:from|between)\s+)?(?:0|1|zero|one)\s*(?:-|\u2013|\u2014|to|and)\s*(?:10|ten)\b"
)
_LABELLED_SCORE = re.compile(
    rf"(?i)\b{_SCORE_LABEL}\b[\s:=\"'()]*(?:[^\d\n.!?:=]{{0,20}}?){_num()}{_SCALE}"
)
_QUALITATIVE_SCORE = re.compile(
    rf"(?i)\b{_SCORE_LABEL}\b[\s:=\"']*(?:is\s+)?(?P<word>very\s+high|high|medium|moderate"
    r"|very\s+low|low|none)\b"
)
_QUALITATIVE_VALUES = {
    "very high": 9,
    "high": 8,
    "medium": 5,
    "moderate": 5,
    "low": 2,
    "very low": 1,
    "none": 1,
}
_SCALED_SCORE = re.compile(
    rf"(?i){_num()}(?:\s*(?:/|out\s+of)\s*(?P<scale>\d+|ten|five|hundred)\b"
    r"|(?P<pct>\s*%|\s+percent\b))"
)
# A bare number opening the reply ("8", "Eight. A goal", "8 - a goal"), not "3 players run".
_LEADING_SCORE = re.compile(
    rf"(?i)^[^\w\n]*(?P<num>{_DIGITS}|{_WORD_NUMBER})"
    r"(?=\s*(?:$|[\n,;:)\]}!\-\u2013\u2014]|\.(?!\d)))"
)
_SCALE_WORDS = {"ten": 10.0, "five": 5.0, "hundred": 100.0}


def parse_significance(reply: object) -> int | None:
    """A significance score 1-10 from a reply such as "Score: 8/10", "eight" or JSON.

    Scores out of another scale (4/5, 80%) are rescaled; 0 becomes 1 and a rescaled
    value above 10 becomes 10. An unscaled number above 10, a negative number or no
    number at all gives None.
    """
    text = _clean(reply)
    data = _json_object(text)
    if data is not None:
        for key in ("significance", "score", "rating", "importance"):
            value = data.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return _score(float(value))
            if isinstance(value, str):
                return parse_significance(value)
    text = _RANGE.sub(" ", text)
    for pattern in (_LABELLED_SCORE, _SCALED_SCORE, _LEADING_SCORE):
        for match in pattern.finditer(text):
            score = None if _is_negative(text, match.start("num")) else _score_from_match(match)
            if score is not None:
                return score
        if pattern is _LABELLED_SCORE:
            word = _QUALITATIVE_SCORE.search(text)
            if word:
                return _QUALITATIVE_VALUES[" ".join(word["word"].lower().split())]
    return None


def _score_from_match(match: re.Match[str]) -> int | None:
    value = _to_number(match["num"])
    groups = match.groupdict()
    if groups.get("scale"):
        scale = _SCALE_WORDS.get(groups["scale"].lower()) or float(groups["scale"])
        return _score(value * 10 / scale, rescaled=True) if scale else None
    if groups.get("pct"):
        return _score(value / 10, rescaled=True)
    return _score(value)


def _score(value: float, rescaled: bool = False) -> int | None:
    if not math.isfinite(value) or value < 0 or (value > 10 and not rescaled):
        return None
    return min(10, max(1, _round_half_up(value)))


# ---- descriptions ------------------------------------------------------------------------

_DESCRIPTION_LABELS = ("description", "summary", "event")


def parse_description(
    reply: object, max_sentences: int = 1, max_chars: int = MAX_DESCRIPTION_CHARS
) -> str | None:
    """A short description: the "Description:" field, else the reply minus any score.

    At most `max_sentences` sentences and `max_chars` characters, first letter capital,
    ending in punctuation; None when the reply holds no real words.
    """
    text = _clean(reply)
    described = _field(text, _DESCRIPTION_LABELS)
    if described is None:
        described = _without_scores(text)
    return _prose(described, max_sentences, max_chars)


def _without_scores(text: str) -> str:
    """The reply with its score parts and other fields cut out, keeping the prose around them."""
    kept = []
    for line in text.splitlines():
        for pattern in (_LABELLED_SCORE, _QUALITATIVE_SCORE, _SCALED_SCORE, _LEADING_SCORE):
            line = pattern.sub(" ", line)
        if not _LABEL_AT.match(line.strip()):  # "Reps: 3" or an empty "Score:" says nothing
            kept.append(line)
    return "\n".join(kept)


# ---- criteria ----------------------------------------------------------------------------

_INLINE_ITEM = re.compile(r"\s+(?=\(?\d{1,2}[.)]\s)|\s*\u2022\s*")
_BULLET = re.compile(
    r"^\s*(?:[-*+\u2022\u00b7\u25aa\u2013\u2014]+|\(?\d{1,2}[.):\]]|\(?[a-h][.)])\s*"
)
_LIST_SEPARATOR = re.compile(r"\s*[,;]\s*")
_INTRO = re.compile(r"(?i)^(?:here\s+(?:are|is)|sure|okay|ok|certainly|the following)\b")
_SHORT_PREFIX = re.compile(r"^[^:,;]{1,40}:\s+(?=\S)")
_CONJUNCTION = re.compile(r"(?i)^(?:and|or)\s+")


def parse_criteria(reply: object, limit: int = MAX_CRITERIA) -> list[str]:
    """Short highlight criteria from a bulleted, numbered, JSON or comma-separated list.

    Introductions are dropped, items trimmed to a short phrase, duplicates removed
    (ignoring case), and at most `limit` kept in the order given.
    """
    text = _clean(reply)
    items = _json_strings(text)
    if items is None:
        items = _list_lines(text)
    criteria: list[str] = []
    seen: set[str] = set()
    for raw in items:
        item = _criterion(raw)
        key = " ".join(re.findall(r"\w+", (item or "").lower()))
        if item and key not in seen:
            seen.add(key)
            criteria.append(item)
        if len(criteria) >= limit:
            break
    return criteria


def _json_strings(text: str) -> list[str] | None:
    data = _json_between(text, "[", "]")
    if not isinstance(data, list):
        return None
    return [item for item in data if isinstance(item, str)] or None


def _list_lines(text: str) -> list[str]:
    lines: list[str] = []
    for line in text.splitlines():
        lines.extend(piece for piece in _INLINE_ITEM.split(line) if piece.strip())
    lines = [_BULLET.sub("", line).strip(_BRACKETS) for line in lines]
    lines = [line for line in lines if line and not line.endswith(":") and not _INTRO.match(line)]
    if len(lines) == 1 and _LIST_SEPARATOR.search(lines[0]):
        return _LIST_SEPARATOR.split(_SHORT_PREFIX.sub("", lines[0]))
    return lines


def _criterion(raw: str) -> str | None:
    item = _CONJUNCTION.sub("", _BULLET.sub("", raw.strip()))
    item = " ".join(item.split()).strip("\"' .,;:!")
    if not item or not _usable(item):
        return None
    return _shorten(item, MAX_CRITERION_CHARS, ellipsis="")


# ---- workout: exercise, reps, form -------------------------------------------------------

REST = "rest"

_EXERCISES: dict[str, tuple[str, ...]] = {
    "squat": ("squat", "air squat", "bodyweight squat", "squatting", "goblet squat"),
    "push-up": ("push up", "pushup", "press up", "pressup"),
    "pull-up": ("pull up", "pullup"),
    "chin-up": ("chin up", "chinup"),
    "sit-up": ("sit up", "situp"),
    "crunch": ("crunch",),
    "lunge": ("lunge", "lunging", "walking lunge"),
    "burpee": ("burpee",),
    "jumping jack": ("jumping jack", "star jump"),
    "plank": ("plank", "planking"),
    "mountain climber": ("mountain climber",),
    "deadlift": ("deadlift", "dead lift"),
    "bench press": ("bench press",),
    "overhead press": ("overhead press", "shoulder press", "military press"),
    "bicep curl": ("bicep curl", "biceps curl", "curl", "dumbbell curl"),
    "row": ("row", "bent over row", "dumbbell row"),
    "dip": ("dip", "tricep dip"),
    "kettlebell swing": ("kettlebell swing",),
    "jump rope": ("jump rope", "jumping rope", "skipping", "skipping rope"),
    "running": ("running", "jogging", "run", "jog"),
    "lateral raise": ("lateral raise", "side raise"),
    "glute bridge": ("glute bridge", "hip bridge"),
    "box jump": ("box jump",),
    "high knees": ("high knees",),
    "calf raise": ("calf raise", "standing calf raise"),
}
# Saying the person is not exercising wins over any exercise named in the same breath.
_REST_NEGATIONS = (
    "no exercise",
    "not exercising",
    "not working out",
    "no activity",
    "no movement",
    "nothing",
    "none",
)
_REST_WORDS = ("rest", "resting", "standing", "idle", "break", "pause", "sitting", "waiting")
_EXERCISE_FILLER = frozenset(
    "a an the person people man woman he she they is are was doing performing does do "
    "exercise exercises exercising some of in this these video frames frame clip segment "
    "it looks like seems to be appears currently i think workout user athlete someone "
    "with their his her now answer name unknown not sure n a don t dont know can cannot tell "
    "see clear".split()
)
_MAX_EXERCISE_WORDS = 3
# An unlabelled answer is taken as a name only when it looks like one: a few plain words.
# Anything longer is a sentence about the scene; anything else is not words.
_SHORT_NAME = re.compile(r"[A-Za-z][A-Za-z'-]*(?:\s+[A-Za-z][A-Za-z'-]*){0,3}[.!]?")


def _plural(phrase: str) -> str:
    return phrase + ("es" if phrase.endswith(("s", "sh", "ch", "x")) else "s")


_EXERCISE_PHRASES: list[tuple[str, str]] = sorted(
    (
        (" " + variant.replace("-", " ") + " ", canonical)
        for canonical, synonyms in _EXERCISES.items()
        for synonym in synonyms
        for variant in (synonym, _plural(synonym))
    ),
    key=lambda pair: -len(pair[0]),
)


def parse_exercise(reply: object) -> str | None:
    """The exercise named in a reply, normalised ("Push ups" -> "push-up"), or "rest".

    Known exercises map to one name each; another name of at most three words, given
    as an "Exercise:" field or as a short answer, is kept lower-case and singular.
    None when the reply names nothing.
    """
    text = _clean(reply)
    named = _field(text, ("exercise", "activity", "movement"))
    labelled = named is not None
    if named is None:
        head = _head(text).strip()
        named = _SENTENCE_END.split(head, maxsplit=1)[0] if head else ""
    padded = " " + " ".join(re.findall(r"[a-z0-9]+", named.lower())) + " "
    if any(f" {phrase} " in padded for phrase in _REST_NEGATIONS):
        return REST
    known = _known_exercise(padded)
    if known:
        return known
    if any(f" {word} " in padded for word in _REST_WORDS):
        return REST
    if not labelled and not _SHORT_NAME.fullmatch(named.strip()):
        return None
    words = [word for word in padded.split() if word not in _EXERCISE_FILLER]
    if not 1 <= len(words) <= _MAX_EXERCISE_WORDS:
        return None
    if not all(word.isalpha() and _VOWEL.search(word) for word in words):
        return None
    return " ".join(words[:-1] + [_singular(words[-1])])


def _known_exercise(padded: str) -> str | None:
    """The canonical name of the earliest known exercise in the text, longest phrase first."""
    found = [
        (padded.find(phrase), -len(phrase), canonical)
        for phrase, canonical in _EXERCISE_PHRASES
        if phrase in padded
    ]
    return min(found)[2] if found else None


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if word.endswith(("ss", "us", "is")) or not word.endswith("s"):
        return word
    return word[:-1]


_REPS_LABELS = ("reps", "repetitions", "rep count", "count")
_NO_REPS = re.compile(r"(?i)\b(?:no|zero|none)\s+(?:reps?|repetitions?)\b|^\W*(?:none|no|zero)\W*$")
_SETS_TIMES_REPS = re.compile(r"(?i)(?<![\w.])(?P<sets>\d+)\s*[x\u00d7]\s*(?P<num>\d+)(?![\w.])")
_COUNTED_REPS = re.compile(rf"(?i){_num()}\s*(?:reps?|repetitions?|times)\b")
_TIMES_REPS = re.compile(r"(?i)(?<!\w)[x\u00d7]\s?(?P<num>\d+)\b|\b(?P<pre>\d+)\s?[x\u00d7](?!\w)")
_ANY_NUMBER = re.compile(rf"(?i){_num()}")
_ONLY_NUMBER = re.compile(rf"(?i)^\W*{_num()}\W*$")


def parse_reps(reply: object) -> int | None:
    """A repetition count from "Reps: 12", "12 reps", "twelve", "x10" or "3x10" (30).

    "no reps" is 0; a negative count, one above MAX_REPS or no count at all is None.
    """
    text = _clean(reply)
    labelled = _field(text, _REPS_LABELS)
    if labelled is not None:
        count = _reps_in(labelled, bare=True)
        if count is not None:
            return count
    return _reps_in(text, bare=False)


def _reps_in(text: str, bare: bool) -> int | None:
    """The count in `text`; `bare` allows any number, as in the value of a "Reps:" field."""
    if _NO_REPS.search(text):
        return 0
    product = _SETS_TIMES_REPS.search(text)
    if product:
        return _reps(float(product["sets"]) * float(product["num"]))
    for pattern in (_COUNTED_REPS, _TIMES_REPS, _ANY_NUMBER if bare else _ONLY_NUMBER):
        match = pattern.search(text)
        if match:
            group = "pre" if match.groupdict().get("pre") else "num"
            if _is_negative(text, match.start(group)):
                return None
            return _reps(_to_number(match[group]))
    return None


def _reps(value: float) -> int | None:
    return int(value) if 0 <= value <= MAX_REPS else None


_FORM_LABELS = ("form notes", "form_notes", "form", "notes", "note", "feedback", "technique")
_FORM_WORDS = re.compile(
    r"(?i)\b(?:form|posture|technique|knees?|back|elbows?|hips?|core|depth|tempo|range of "
    r"motion|alignment|controlled|straight)\b"
)


def parse_form_notes(reply: object, max_chars: int = MAX_FORM_NOTE_CHARS) -> str | None:
    """A short note on form: the "Form:" field, else the first sentence about technique."""
    text = _clean(reply)
    note = _field(text, _FORM_LABELS)
    if note is None:
        unlabelled = (line for line in text.splitlines() if not _LABEL_AT.match(line.strip()))
        sentences = _SENTENCE_END.split("\n".join(unlabelled))
        note = next((s for s in sentences if _FORM_WORDS.search(s)), None)
    return _prose(note, max_sentences=1, max_chars=max_chars)
