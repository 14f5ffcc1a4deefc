"""Hand-computed checks of the VQA protocols, including the quirks of the original code."""

import pytest

from medcap.metrics.vqa import (
    PROTOCOL_METRICS,
    exact_match,
    llava_med_closed_hit,
    llava_med_f1_precision_recall,
    llava_med_normalize_word,
    llava_med_open_recall,
    medpalm_bleu1,
    medpalm_token_f1,
    metrics_for_protocols,
    normalize_answer,
    vqa_scores,
)


# --- our exact match ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),
        ("  The   LIVER,\tleft lobe! ", "the liver left lobe"),
        ("x-ray", "xray"),  # punctuation deleted, not replaced by a space
        ("3.5 cm", "35 cm"),
        ("胸部，CT。", "胸部ct"),  # Unicode punctuation (category P*) too
        ("None", "none"),  # text, not a missing value, and no number mapping
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_is_whole_string():
    assert exact_match("YES!", "yes") == 1.0
    assert exact_match("yes, there is", "yes") == 0.0
    assert exact_match("the liver", "liver") == 0.0  # articles are kept


# --- LLaVA-Med normalize_word ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x-ray", "x ray"),  # '-' without a neighbouring space becomes a space
        ("x-ray - chest", "xray chest"),  # ' - ' present: every '-' is deleted
        ("None", "0"),  # "none" maps to "0" like number words
        ("two nodules", "2 nodules"),
        ("The left lung", "left lung"),  # articles dropped
        ("Yes.", "yes"),
        ("3.5 cm", "3.5 cm"),  # a period followed by a digit is kept
        ("x.ray", "xray"),  # other periods are deleted, not replaced
        ("dont know", "don't know"),  # contractions expanded
        ("yes: (left)", "yes: left"),  # ':' is not in the punctuation list
        ("1,000 (approx)", "1000 approx"),  # digit,digit anywhere: all listed marks deleted
    ],
)
def test_llava_med_normalize_word(text, expected):
    assert llava_med_normalize_word(text) == expected


def test_llava_med_normalize_word_removes_at_most_32_periods():
    # period_strip.sub("", text, re.UNICODE): re.UNICODE == 32 is passed as `count`.
    assert llava_med_normalize_word("a." * 40) == "a" * 32 + "a." * 8
    assert llava_med_normalize_word("a." * 10) == "a" * 10


# --- LLaVA-Med open recall ---------------------------------------------------------------------


def test_llava_med_recall_counts_prediction_repeats():
    # tp adds the prediction's count of a shared word: tp = 3 (left x3), fn = 1 (lung).
    f1, precision, recall = llava_med_f1_precision_recall("left left left", "left lung")
    assert recall == pytest.approx(3 / 4)  # a set- or clipped-count recall would give 1/2
    assert precision == pytest.approx(1.0)
    assert f1 == pytest.approx(2 * 1.0 * 0.75 / 1.75)


def test_llava_med_recall_is_share_of_reference_words():
    # reference "right upper lobe" (3 words), prediction mentions "right" and "lobe".
    assert llava_med_open_recall("The right lobe is affected.", "Right upper lobe") == pytest.approx(2 / 3)
    assert llava_med_open_recall("None", "none") == 1.0
    assert llava_med_open_recall("zero", "None") == 1.0  # both normalise to "0"
    assert llava_med_open_recall("", "liver") == 0.0
    assert llava_med_open_recall("liver", "the") == 0.0  # reference empty after normalisation


# --- LLaVA-Med closed rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("No, there is no nodule.", "No", 1.0),
        ("Yes", "no", 0.0),
        ("The liver looks normal.", "Yes", 0.0),
        ("There is a nodule", "No", 1.0),  # "no" inside "nodule"
        ("The eyes are fine", "yes", 1.0),  # "yes" inside "eyes"
        ("yes and no", "no", 1.0),  # both words: right whatever the reference
        ("yes and no", "yes", 1.0),
        ("left", "left", 0.0),  # non yes/no reference: needs "yes"/"no" in the prediction
        ("left, not right", "left", 1.0),  # ... which "not" provides
        ("I cannot tell", "No", 1.0),  # "cannot" contains "no"
        ("Maybe", "no", 0.0),  # neither "yes" nor "no" anywhere
    ],
)
def test_llava_med_closed_hit(prediction, reference, expected):
    assert llava_med_closed_hit(prediction, reference) == expected


def test_llava_med_closed_accuracy_counts_every_row():
    # 4 CLOSED rows, 1 right. Older run_eval.py copies skip wrong answers that mention yes/no
    # (rows 2 and 4 here), which would give 1/2; the v1.0.0 rule gives 1/4.
    scores = vqa_scores(
        predictions=["yes", "yes", "maybe", "no"],
        references=["yes", "no", "no", "yes"],
        answer_types=["CLOSED"] * 4,
        protocols=["llava_med"],
    )
    assert scores["llava_med_closed_accuracy"] == pytest.approx(25.0)
    assert scores["llava_med_open_recall"] is None  # no OPEN row


# --- Med-PaLM M BLEU-1 / token F1 ------------------------------------------------------------------


def test_medpalm_bleu1():
    assert medpalm_bleu1("yes", "yes there is") == 1.0  # no brevity penalty
    assert medpalm_bleu1("no no", "no") == 0.5  # clipped counts
    assert medpalm_bleu1("Yes.", "yes") == 0.0  # punctuation stays on the token
    assert medpalm_bleu1("the cat sat", "the dog sat") == pytest.approx(2 / 3)
    assert medpalm_bleu1("", "yes") == 0.0


def test_medpalm_token_f1():
    # common = 2 ("the", "cat"); precision 2/4, recall 2/2 -> F1 = 2/3
    assert medpalm_token_f1("the big black cat", "the cat") == pytest.approx(2 / 3)
    assert medpalm_token_f1("no no", "no") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert medpalm_token_f1("", "") == 1.0  # both empty
    assert medpalm_token_f1("", "yes") == 0.0
    assert medpalm_token_f1("Yes.", "yes") == 0.0


# --- aggregation -----------------------------------------------------------------------------------


def test_vqa_scores_all_protocols_with_breakdowns():
    scores = vqa_scores(
        predictions=["No, there is no nodule.", "left", "left left left", "none"],
        references=["No", "left", "left lung", "None"],
        answer_types=[" closed", "CLOSED", "OPEN", "open "],
        question_types=["PRES", "POS", "ORGAN", ""],
    )
    # closed rows: exact 0 and 1; LLaVA rule 1 and 0 (no yes/no in "left").
    assert scores["closed_accuracy"] == pytest.approx(50.0)
    assert scores["llava_med_closed_accuracy"] == pytest.approx(50.0)
    assert scores["closed_accuracy/question_type=POS"] == pytest.approx(100.0)
    assert scores["llava_med_closed_accuracy/question_type=POS"] == pytest.approx(0.0)
    # open rows: recall 3/4 and 1; exact 0 and 1.
    assert scores["llava_med_open_recall"] == pytest.approx(87.5)
    assert scores["open_exact_match"] == pytest.approx(50.0)
    assert scores["llava_med_open_recall/question_type=ORGAN"] == pytest.approx(75.0)
    assert "llava_med_open_recall/question_type=PRES" not in scores  # no OPEN row of that type
    # BLEU-1 per row: 1/5, 1, 1/3, 1 -> mean 38/60; token F1: 1/3, 1, 2/5, 1 -> mean 41/60.
    assert scores["bleu1"] == pytest.approx(100 * 38 / 60)
    assert scores["token_f1"] == pytest.approx(100 * 41 / 60)
    assert scores["bleu1/answer_type=CLOSED"] == pytest.approx(100 * 0.6)
    assert scores["token_f1/answer_type=OPEN"] == pytest.approx(100 * 0.7)
    assert scores["exact_match"] == pytest.approx(50.0)
    for metrics in PROTOCOL_METRICS.values():
        for metric in metrics:
            assert metric in scores


def test_vqa_scores_empty_applicable_set_is_none():
    scores = vqa_scores(["yes"], ["yes"], ["CLOSED"])
    assert scores["open_exact_match"] is None
    assert scores["llava_med_open_recall"] is None
    assert scores["bleu1/answer_type=OPEN"] is None
    assert scores["closed_accuracy"] == 100.0


def test_vqa_scores_rejects_bad_answer_type_naming_the_row():
    with pytest.raises(ValueError, match=r"row 1: answer_type 'YESNO'"):
        vqa_scores(["a", "b"], ["a", "b"], ["OPEN", "YESNO"])


def test_protocol_selection():
    assert metrics_for_protocols(["medpalm"]) == ["bleu1", "token_f1"]
    selected = metrics_for_protocols(["exact", "llava_med"])
    assert selected[:2] == ["llava_med_open_recall", "llava_med_closed_accuracy"]
    with pytest.raises(ValueError, match="unknown protocol 'vqa'"):
        metrics_for_protocols(["vqa"])
