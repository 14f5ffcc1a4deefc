# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""The answer-without-looking baselines: hand-computed scores, the model's answer normalisation
(checked against ``vqa_scores``), records read by the schema's rules, errors that name the record."""

import pytest

from medcap.metrics import compute_baselines as exported
from medcap.metrics.baselines import compute_baselines
from medcap.metrics.vqa import vqa_scores


def _qa(question, answer, answer_type, question_type, system=None):
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    if system is not None:
        turns.insert(0, {"from": "system", "value": system})
    return {"conversations": turns, "answer_type": answer_type, "question_type": question_type}


def test_exported_from_the_metrics_package():
    assert exported is compute_baselines


def test_baselines_on_hand_built_records():
    train = [
        _qa("Is there a lesion?", "yes", "CLOSED", "presence"),
        _qa("Is there a lesion?", "yes", "CLOSED", "presence"),
        _qa("Is there a lesion?", "no", "CLOSED", "presence"),
        _qa("Is this a CT scan?", "no", "CLOSED", "modality"),
        _qa("Is this a CT scan?", "no", "CLOSED", "modality"),
        _qa("Is this an X-ray?", "yes", "CLOSED", "modality"),
        _qa("How many lesions are there?", "0", "OPEN", "count"),
        _qa("How many lesions are there?", "2", "OPEN", "count"),
        _qa("How many lesions are there?", "2", "OPEN", "count"),
        _qa("Where is the largest lesion?", "none", "OPEN", "location"),
        _qa("Where is the largest lesion?", "Upper left", "OPEN", "location"),
    ]
    test = [
        _qa("Is there a lesion?", "no", "CLOSED", "presence"),
        _qa("Is there a lesion?", "yes", "CLOSED", "presence"),
        _qa("Is this a CT scan?", "no", "CLOSED", "modality"),
        _qa("Is this an X-ray?", "yes", "CLOSED", "modality"),
        _qa("Is this an MRI scan?", "no", "CLOSED", "modality"),  # unseen text
        _qa("How many lesions are there?", "2", "OPEN", "count"),
        _qa("Where is the largest lesion?", "upper left ", "OPEN", "location"),
        _qa("What is the imaging modality?", "CT", "OPEN", "modality"),  # unseen type
    ]
    result = compute_baselines(train, test)
    assert result["num_train"] == 11 and result["num_test"] == 8

    majority = result["majority"]
    # presence -> "yes" (2 of 3); modality (closed) -> "no" (2 of 3); count -> "2";
    # location: "none" and "upper left" tie 1-1 -> alphabetically first "none"
    assert majority["answers"] == {
        "CLOSED/modality": "no",
        "CLOSED/presence": "yes",
        "OPEN/count": "2",
        "OPEN/location": "none",
    }
    # closed: presence 1/2, modality no,no,no vs no,yes,no -> 2/3: 3 of 5
    assert majority["closed_accuracy"] == pytest.approx(3 / 5)
    # open: count hit, location miss, unseen type miss -> 1 of 3
    assert majority["open_exact_match"] == pytest.approx(1 / 3)
    assert majority["by_question_type"]["CLOSED/presence"] == {"accuracy": 0.5, "count": 2}
    assert majority["by_answer_type"]["OPEN"] == {"accuracy": pytest.approx(1 / 3), "count": 3}

    question_only = result["question_only"]
    # per question: presence "yes"; CT "no"; X-ray "yes"; MRI unseen -> type majority "no"
    assert question_only["answers"]["Is this an X-ray?"] == "yes"
    assert question_only["closed_accuracy"] == pytest.approx(4 / 5)
    # count "2" hit; location tie -> "none" miss; unseen type -> "" miss
    assert question_only["open_exact_match"] == pytest.approx(1 / 3)


def _predictions(result, name, records):
    """The baseline's answer for each record, read back from its learned ``answers``."""
    answers = result[name]["answers"]
    majority = result["majority"]["answers"]
    out = []
    for record in records:
        type_key = f"{record['answer_type'].strip().upper()}/{record['question_type']}"
        question = record["conversations"][-2]["value"].strip()
        fallback = majority.get(type_key, "")
        out.append(answers.get(question, fallback) if name == "question_only" else fallback)
    return out


def test_answers_are_counted_and_scored_with_the_model_normalisation():
    train = [
        # "Yes." and "yes" are one answer (2 votes) against "no" (1): strip().lower() would
        # have seen three answers tied 1-1-1 and picked "no"
        _qa("Is there a lesion?", "Yes.", "CLOSED", "presence"),
        _qa("Is there a lesion?", "yes", "CLOSED", "presence"),
        _qa("Is there a lesion?", "no", "CLOSED", "presence"),
        _qa("What is the imaging modality?", "X-ray", "OPEN", "modality"),
        _qa("What is the imaging modality?", "x-ray", "OPEN", "modality"),
        _qa("What is the imaging modality?", "CT", "OPEN", "modality"),
        _qa("Which organ?", "Liver", "OPEN", "organ"),
    ]
    test = [
        _qa("Is there a lesion?", "Yes.", "CLOSED", "presence"),  # matched by "yes"
        _qa("Is there a lesion?", " YES! ", "closed", "presence"),  # answer type in any case
        _qa("Is there a lesion?", "no", "CLOSED", "presence"),
        _qa("What is the imaging modality?", "xray", "OPEN", "modality"),  # "x-ray" -> "xray"
        _qa("What is the imaging modality?", "CT.", "OPEN", "modality"),
        _qa("Which organ?", "liver,", "OPEN", "organ"),
        _qa("Which lobe?", "left", "OPEN", "organ"),  # unseen question: type majority "liver"
    ]
    result = compute_baselines(train, test)
    majority = result["majority"]
    # the learned answers are spelled as train spells them (lowercased), ties to the first
    assert majority["answers"] == {"CLOSED/presence": "yes", "OPEN/modality": "x-ray", "OPEN/organ": "liver"}
    assert majority["closed_accuracy"] == pytest.approx(2 / 3)
    assert majority["by_answer_type"]["CLOSED"] == {"accuracy": pytest.approx(2 / 3), "count": 3}
    assert majority["open_exact_match"] == pytest.approx(2 / 4)
    references = [record["conversations"][1]["value"] for record in test]
    answer_types = [record["answer_type"] for record in test]
    for name in ("majority", "question_only"):
        scores = vqa_scores(_predictions(result, name, test), references, answer_types, protocols=("exact",))
        assert result[name]["closed_accuracy"] == pytest.approx(scores["closed_accuracy"] / 100)
        assert result[name]["open_exact_match"] == pytest.approx(scores["open_exact_match"] / 100)


def test_a_leading_system_turn_is_not_the_question():
    system = "You are a radiologist. Answer briefly."
    train = [
        _qa("Is there a fracture?", "yes", "CLOSED", "abnormality", system=system),
        _qa("Is there a fracture?", "yes", "CLOSED", "abnormality"),
        _qa("Is there a fracture?", "no", "CLOSED", "abnormality", system=system),
        _qa("Is the heart enlarged?", "no", "CLOSED", "size", system=system),
        {  # the chat speaker names of the schema
            "conversations": [
                {"from": "system", "value": system},
                {"from": "user", "value": "Is the heart enlarged?"},
                {"from": "assistant", "value": "no"},
            ],
            "answer_type": "CLOSED",
            "question_type": "size",
        },
    ]
    test = [
        _qa("Is there a fracture?", "yes", "CLOSED", "abnormality", system=system),
        _qa("Is the heart enlarged?", "no", "CLOSED", "size", system=system),
        _qa("Is the heart enlarged?", "yes", "CLOSED", "size"),
    ]
    result = compute_baselines(train, test)
    question_only = result["question_only"]
    # keyed by the human turn (not the system prompt), answered by the gpt turn (not the question)
    assert question_only["answers"] == {"Is the heart enlarged?": "no", "Is there a fracture?": "yes"}
    assert result["majority"]["answers"] == {"CLOSED/abnormality": "yes", "CLOSED/size": "no"}
    assert question_only["closed_accuracy"] == pytest.approx(2 / 3)
    assert question_only["by_question_type"]["CLOSED/abnormality"] == {"accuracy": 1.0, "count": 1}


def test_baselines_name_the_bad_record():
    good = _qa("Is there a lesion?", "yes", "CLOSED", "presence")
    with pytest.raises(ValueError, match="test record 1: missing field 'question_type'"):
        compute_baselines([good], [good, {"conversations": [], "answer_type": "OPEN"}])
    question_only = {**good, "conversations": [{"from": "system", "value": "hi"}, good["conversations"][0]]}
    message = "train record 1: field 'conversations' needs a human question and a gpt answer"
    with pytest.raises(ValueError, match=message):
        compute_baselines([good, question_only], [good])
