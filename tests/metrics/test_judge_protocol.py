"""Hand-checked tests of the LLM-judge prompts and reply parsers."""

import pytest

from medcap.metrics.judge import (
    build_choice_prompt,
    build_judge_prompt,
    medcap_original_score,
    parse_choice_reply,
    parse_judge_reply,
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
