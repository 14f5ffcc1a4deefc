"""Hand-checked tests of the LLM-judge prompts and reply parsers (the pure part, no model)."""

import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from medcap.metrics.judge import (
    build_choice_prompt,
    build_judge_prompt,
    medcap_original_score,
    parse_choice_reply,
    parse_judge_reply,
    parse_options,
    reference_letter,
    summarise_choices,
    summarise_judgements,
)


def test_build_judge_prompt_full_text():
    prompt = build_judge_prompt("Is there a fracture?", "No fracture is seen.", "no")
    assert prompt == (
        "Respond with only RIGHT or WRONG. Is our answer to the medical question correct given "
        "the correct answer?\n"
        "Question: Is there a fracture?\n"
        "Our answer: No fracture is seen.\n"
        "Correct answer: no"
    )


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("RIGHT", True),
        ("right", True),
        ("  **Right.**\n", True),
        ("`WRONG`", False),
        ("Wrong! The right answer is no.", False),  # later clause may name the other word
        ("> RIGHT - the answers agree", True),
        ("RIGHT/WRONG", None),  # both verdicts in the first clause
        ("Right or wrong", None),
        ("Right, but wrong format", None),
        ("The answer is right", None),  # first word is not a verdict
        ("Alright", None),
        ("Rightly so", None),
        ("Correct", None),
        ("", None),
        ("***", None),
        ("#$%^ 12", None),
    ],
)
def test_parse_judge_reply(reply, expected):
    assert parse_judge_reply(reply) is expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("RIGHT", 1),
        ("WRONG", 0),
        ("Not right", 1),  # the original substring rule's false positives
        ("Alright", 1),
        ("WRONG. The right answer is no.", 1),
        ("", 0),
        ("Correct", 0),
    ],
)
def test_medcap_original_score(reply, expected):
    assert medcap_original_score(reply) == expected


def test_build_choice_prompt_full_text():
    prompt = build_choice_prompt("Which modality?", "It is a CT scan.", {"A": "MRI", "B": "CT"})
    assert prompt == (
        "Question: Which modality?\n"
        "Our answer: It is a CT scan.\n"
        "A. MRI\n"
        "B. CT\n"
        "\n"
        "Based on the question and our answer, respond with only the letter of the correct "
        "option from the given choices."
    )


def test_build_choice_prompt_rejects_bad_options():
    with pytest.raises(ValueError, match="options is empty"):
        build_choice_prompt("q", "a", {})
    with pytest.raises(ValueError, match="'AB' is not a single letter"):
        build_choice_prompt("q", "a", {"AB": "x"})


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("(C)", "C"),
        ("**D.**", "D"),
        ("B. CT", "B"),
        ("A) MRI", "A"),
        ("Answer: C", "C"),
        ("The correct option is D.", "D"),
        ("Option B is correct", "B"),
        ("A chest CT", None),  # the article "A", not option A
        ("Bone", None),  # the original first-character rule reads this as B
        ("E", None),  # not an offered letter
        ("A or B", None),
        ("A, B", None),
        ("A/B", None),
        ("I think B", None),
        ("", None),
        ("...", None),
    ],
)
def test_parse_choice_reply(reply, expected):
    assert parse_choice_reply(reply, "ABCD") == expected


def test_parse_choice_reply_respects_letters():
    assert parse_choice_reply("C", ["A", "B"]) is None
    assert parse_choice_reply("b", ["a", "b"]) == "B"


def test_summarise_judgements():
    summary = summarise_judgements([True, False, None, True, None])
    assert summary == {
        "n": 5,
        "n_right": 2,
        "n_wrong": 1,
        "n_unparsable": 2,
        "accuracy_over_parsable": pytest.approx(2 / 3),
        "accuracy_unparsable_as_wrong": pytest.approx(2 / 5),
    }


def test_summarise_judgements_garbage_and_empty():
    replies = ["???", "lorem ipsum", "RIGHT WRONG"]
    summary = summarise_judgements([parse_judge_reply(r) for r in replies])
    assert summary["n_unparsable"] == 3
    assert summary["accuracy_over_parsable"] is None
    assert summary["accuracy_unparsable_as_wrong"] == 0.0
    empty = summarise_judgements([])
    assert empty["accuracy_over_parsable"] is None and empty["accuracy_unparsable_as_wrong"] is None


def test_parse_options_keeps_order_and_names_the_cell():
    assert list(parse_options('{"B": "CT", "A": "MRI"}').items()) == [("B", "CT"), ("A", "MRI")]
    where = "p.csv: row 3, column 'options'"
    with pytest.raises(ValueError, match=r"p\.csv: row 3, column 'options': not valid JSON"):
        parse_options("A: x", where)
    with pytest.raises(ValueError, match=r"row 3, column 'options': expected a non-empty JSON object"):
        parse_options("{}", where)
    with pytest.raises(ValueError, match=r"row 3, column 'options': expected a non-empty JSON object"):
        parse_options('["A", "B"]', where)
    with pytest.raises(ValueError, match=r"option 'AB': keys must be single letters"):
        parse_options('{"AB": "x"}', where)
    with pytest.raises(ValueError, match=r"option 'A': keys must be single letters and values strings"):
        parse_options('{"A": 1}', where)


def test_reference_letter():
    assert reference_letter("b.", {"A": "x", "B": "y"}) == "B"
    assert reference_letter("(a)", {"A": "x", "B": "y"}) == "A"
    assert reference_letter("X-Ray", {"A": "x-ray", "B": "CT"}) == "A"
    assert reference_letter("PET", {"A": "x-ray", "B": "CT"}) is None
    assert reference_letter("CT", {"A": "ct", "B": "CT"}) is None  # names two options: none chosen


def test_summarise_choices():
    summary = summarise_choices(["B", None, "A", "B", "B"], [True, None, False, None, True])
    assert summary == {
        "n": 5,
        "n_parsed": 4,
        "n_unparsable": 1,
        "n_scored": 3,
        "n_correct": 2,
        "accuracy_over_scored": pytest.approx(2 / 3),
        "choice_counts": {"A": 1, "B": 3},
    }
    assert summarise_choices([], [])["accuracy_over_scored"] is None


def test_metrics_import_neither_generation_nor_models():
    """metrics is a leaf: importing it (judge included) loads no model or decoding code, and no torch."""
    code = (
        "import sys, medcap.metrics, medcap.metrics.judge; "
        "bad = sorted(m for m in sys.modules if m.startswith(('medcap.generation', 'medcap.models', 'torch'))); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr
