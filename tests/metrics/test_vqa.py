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


# --- MedEvalKit (alibaba-damo-academy/MedEvalKit: VQA_RAD.py 564d279, SLAKE.py c3651c9) ------------
# Rows hand-built from the code: cal_metrics takes a complete \boxed{} (else the <answer> bodies),
# judge_judgement wants exactly one of yes/no as a substring plus the reference as a substring,
# judge_open_end_vqa's em compares the parsed reply with the reference, periods and spaces kept.

from medcap.metrics.vqa import (  # noqa: E402
    BINARY_METRICS,
    medevalkit_close_end_match,
    medevalkit_is_closed,
    medevalkit_judgement,
    medevalkit_open_match,
    medevalkit_parse_response,
    medevalkit_slake_hit,
    medevalkit_vqa_rad_hit,
)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("The answer is yes", " yes"),  # split on "answer is", leading space kept
        ("Final answer: left lung", " left lung"),  # "answer:" splits
        ("\\boxed{Liver}", "liver"),  # lowercased, then the last complete box
        ("first \\boxed{no} then \\boxed{\\text{yes}}", "\\text{yes}"),  # the last box, nested braces
        ("I boxed it: liver", "None"),  # "boxed" without a box: the string "None"
        ("<answer>CT</answer> and <answer>MRI</answer>", "ct mri"),  # every <answer> body
        ("  Yes.\n", "  yes.\n"),  # nothing stripped here
    ],
)
def test_medevalkit_parse_response(response, expected):
    assert medevalkit_parse_response(response) == expected


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("Yes", "yes", 1.0),
        ("No.", "no", 1.0),
        ("yes and no", "no", 0.0),  # both words: XOR fails (LLaVA-Med's rule scores 1)
        ("Yes, there is a nodule.", "yes", 0.0),  # "no" inside "nodule": both present -> 0
        ("There is a nodule", "no", 1.0),  # only "no" (inside "nodule"), and "no" is in it
        ("Not sure", "no", 1.0),  # "no" inside "not"
        ("The eyes look fine", "yes", 1.0),  # "yes" inside "eyes"
        ("Maybe", "yes", 0.0),
        ("The answer is no", "yes", 0.0),
    ],
)
def test_medevalkit_judgement(prediction, reference, expected):
    assert medevalkit_judgement(prediction, reference) == expected


def test_medevalkit_open_and_close_end_matches():
    assert medevalkit_open_match("Liver", "liver") == 1.0
    assert medevalkit_open_match("liver.", "liver") == 0.0  # open: periods kept
    assert medevalkit_close_end_match("liver.", "Liver") == 1.0  # closed: periods and line breaks removed
    assert medevalkit_close_end_match("the liver", "liver") == 0.0
    assert medevalkit_close_end_match("liver ", "liver") == 0.0  # spaces not stripped
    assert medevalkit_open_match("The answer is liver", "liver") == 0.0  # " liver" keeps its space


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("\\boxed{Yes}", "yes", 1.0),
        ("<answer>left lung</answer>", "Left Lung", 1.0),  # open: em after the <answer> body
        ("  left lung  ", "left lung", 1.0),  # VQA_RAD.py strips the reply and the reference
        ("The answer is left lung", "left lung", 0.0),  # parse_response leaves " left lung"
        ("Yes, there is", " YES ", 1.0),  # the reference is lowercased and stripped first
        ("yes and no", "no", 0.0),
        ("left.", "left", 0.0),  # a non-yes/no reference is open: em keeps the period
    ],
)
def test_medevalkit_vqa_rad_hit(prediction, reference, expected):
    assert medevalkit_vqa_rad_hit(prediction, reference) == expected


@pytest.mark.parametrize(
    "prediction, reference, answer_type, expected",
    [
        ("yes, it is", "yes", "CLOSED", 1.0),  # lowercase yes/no reference: judge_judgement
        ("yes, it is", "Yes", "CLOSED", 0.0),  # SLAKE's capitalised "Yes": strict judge_close_end_vqa
        ("Yes.", "Yes", "CLOSED", 1.0),  # ... which drops the period and lowercases
        ("lung.", "Lung", "CLOSED", 1.0),
        ("the lung", "Lung", "CLOSED", 0.0),
        (" lung", "Lung", "CLOSED", 0.0),  # SLAKE.py strips nothing
        ("Chest", "Chest", "OPEN", 1.0),
        ("chest.", "Chest", "OPEN", 0.0),
        ("yes", "Yes", "OPEN", 1.0),  # the answer type decides, not the reference
    ],
)
def test_medevalkit_slake_hit(prediction, reference, answer_type, expected):
    assert medevalkit_slake_hit(prediction, reference, answer_type) == expected


def test_medevalkit_protocol_aggregation():
    predictions = ["Yes", "yes, a nodule", "\\boxed{left}", "Lung.", "lung", "Chest"]
    references = ["yes", "Yes", "left", "Lung", "lung", "Abdomen"]
    answer_types = ["CLOSED", "CLOSED", "CLOSED", "CLOSED", "OPEN", "OPEN"]
    # VQA-RAD rule: closed = rows 0, 1 (yes/no references): hits 1, 0 ("no" in "nodule").
    # Open = rows 2..5: em of "left" = 1, "lung." vs "lung" = 0, "lung" = 1, "chest" = 0.
    # SLAKE rule: CLOSED rows 0..3 -> judge_judgement("yes") 1, strict "yes, a nodule" vs "yes" 0,
    # strict "left" 1, "lung" (period dropped) 1; OPEN rows 4, 5 -> 1, 0.
    scores = vqa_scores(predictions, references, answer_types, protocols=["medevalkit"])
    assert {key.split("/")[0] for key in scores} == set(PROTOCOL_METRICS["medevalkit"])
    assert scores["medevalkit_closed_accuracy"] == pytest.approx(50.0)
    assert scores["medevalkit_open_accuracy"] == pytest.approx(50.0)
    assert scores["medevalkit_accuracy"] == pytest.approx(100 * 3 / 6)
    assert scores["medevalkit_accuracy/answer_type=CLOSED"] == pytest.approx(50.0)  # rows 0..3: 1, 0, 1, 0
    assert scores["medevalkit_slake_closed_accuracy"] == pytest.approx(75.0)
    assert scores["medevalkit_slake_open_accuracy"] == pytest.approx(50.0)
    assert scores["medevalkit_slake_accuracy"] == pytest.approx(100 * 4 / 6)
    assert medevalkit_is_closed(" No ") and not medevalkit_is_closed("none")
    assert set(PROTOCOL_METRICS["medevalkit"]) <= BINARY_METRICS
