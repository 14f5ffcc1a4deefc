# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""Answer-without-looking VQA baselines, scored like the model rows.

* majority: the most frequent train answer of each (answer_type, question_type);
* question_only: the most frequent train answer of each exact question text, falling back to
  the majority answer of its type for question texts not seen in train.

Answers are counted and compared after :func:`medcap.metrics.vqa.normalize_answer`, the
normalisation of the model's exact-match rows (a reference "Yes." matches a learned "yes"), and a
baseline's ``closed_accuracy`` / ``open_exact_match`` equal what
:func:`medcap.metrics.vqa.vqa_scores` gives its answers as predictions (as fractions, not
percentages). Records are read by :mod:`medcap.data.schema` (the first human turn is the
question and the first gpt turn the answer, after any system turn). Used for the synthetic data
(``baselines.json``) and for VQA-RAD / SLAKE in ``tools/demo_summary.py``.
"""

from collections import Counter, defaultdict
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

from medcap.data import schema
from medcap.metrics.vqa import exact_match, normalize_answer

# headline metric -> the answer type it averages over (the exact-protocol names of vqa_scores)
HEADLINE_METRICS = {"closed_accuracy": "CLOSED", "open_exact_match": "OPEN"}


def _answer_type(record: Dict[str, Any]) -> str:
    """CLOSED or OPEN by the schema's rule (any case); other types (e.g. CAPTION) as written."""
    value = record["answer_type"]
    return schema.normalize_answer_type(value) or str(value).strip()


def _type_key(record: Dict[str, Any]) -> str:
    return f"{_answer_type(record)}/{record['question_type']}"


def _question(record: Dict[str, Any]) -> str:
    return schema.first_question(record).strip()


def _most_common(counter: Counter) -> str:
    """Most frequent key; ties go to the alphabetically first key."""
    return min(counter, key=lambda key: (-counter[key], key))


def _learn(pairs: Iterable[Tuple[str, str]]) -> Dict[str, str]:
    """key -> most frequent answer of the key, by normalised answer.

    The answer is reported as train spells it (stripped and lowercased; the most frequent
    spelling of the winning normalised answer), so ``"X-ray"`` reads ``"x-ray"``, not ``"xray"``.
    """
    votes: Dict[str, Counter] = defaultdict(Counter)  # key -> normalised answer -> count
    spellings: Dict[Tuple[str, str], Counter] = defaultdict(Counter)
    for key, answer in pairs:
        normalized = normalize_answer(answer)
        votes[key][normalized] += 1
        spellings[key, normalized][answer.strip().lower()] += 1
    return {key: _most_common(spellings[key, _most_common(counter)]) for key, counter in votes.items()}


def _check(split: str, records: Sequence[Dict[str, Any]]) -> None:
    for index, record in enumerate(records):
        for field in ("conversations", "answer_type", "question_type"):
            if field not in record:
                raise ValueError(f"{split} record {index}: missing field {field!r}")
        if schema.first_question(record) is None or schema.first_answer(record) is None:
            turns = record["conversations"]
            count = len(turns) if isinstance(turns, list) else 0
            raise ValueError(
                f"{split} record {index}: field 'conversations' needs a human question and "
                f"a gpt answer, got {count} turn(s)"
            )


def _score(test_records: Sequence[Dict[str, Any]], predict: Callable[[Dict[str, Any]], str]) -> Dict[str, Any]:
    hits: Dict[str, List[float]] = defaultdict(list)
    by_answer_type: Dict[str, List[float]] = defaultdict(list)
    for record in test_records:
        hit = exact_match(predict(record), schema.first_answer(record))
        hits[_type_key(record)].append(hit)
        by_answer_type[_answer_type(record)].append(hit)

    def summary(values):
        return {"accuracy": sum(values) / len(values), "count": len(values)}

    headlines = {
        name: summary(by_answer_type[answer_type])["accuracy"] if by_answer_type.get(answer_type) else None
        for name, answer_type in HEADLINE_METRICS.items()
    }
    return {
        **headlines,
        "by_answer_type": {k: summary(v) for k, v in sorted(by_answer_type.items())},
        "by_question_type": {k: summary(v) for k, v in sorted(hits.items())},
    }


def compute_baselines(
    train_records: Sequence[Dict[str, Any]], test_records: Sequence[Dict[str, Any]]
) -> Dict[str, Any]:
    """Scores two answer-without-looking baselines learned on train, on test.

    * majority: the most frequent train answer of each (answer_type, question_type);
    * question_only: the most frequent train answer of each exact question text (stripped),
      falling back to the majority answer of its type for question texts not seen in train.

    Answers are counted and compared after :func:`medcap.metrics.vqa.normalize_answer`; ties
    between equally frequent answers go to the alphabetically first (normalised) answer.
    Accuracy is exact match (:func:`medcap.metrics.vqa.exact_match`), reported for CLOSED and
    OPEN records (``closed_accuracy``, ``open_exact_match``), per answer type and per
    ``"<answer_type>/<question_type>"``; CLOSED/OPEN are read in any case
    (:func:`medcap.data.schema.normalize_answer_type`), other types (e.g. CAPTION) are kept as
    written. Types absent from test have no entry, and the headline numbers are None when test
    has no CLOSED (or OPEN) record.

    Args:
        train_records (Sequence[Dict[str, Any]]): records with ``conversations`` (read by
            :func:`medcap.data.schema.first_question` / ``first_answer``: a system turn may come
            first), ``answer_type`` and ``question_type``.
        test_records (Sequence[Dict[str, Any]]): records of the same shape.

    Returns:
        Dict[str, Any]: ``{"majority": {...}, "question_only": {...}, "num_train",
        "num_test"}``; each baseline holds ``closed_accuracy``, ``open_exact_match``,
        ``by_answer_type``, ``by_question_type`` (each with ``accuracy`` and ``count``) and
        the learned ``answers`` (as train spells them, stripped and lowercased).

    Raises:
        ValueError: if a record lacks a field or a question/answer turn, naming the split,
            record index and field.
    """
    _check("train", train_records)
    _check("test", test_records)
    majority = _learn((_type_key(r), schema.first_answer(r)) for r in train_records)
    per_question = _learn((_question(r), schema.first_answer(r)) for r in train_records)

    def predict_majority(record):
        return majority.get(_type_key(record), "")

    def predict_question_only(record):
        return per_question.get(_question(record), predict_majority(record))

    return {
        "majority": {**_score(test_records, predict_majority), "answers": dict(sorted(majority.items()))},
        "question_only": {
            **_score(test_records, predict_question_only),
            "answers": dict(sorted(per_question.items())),
        },
        "num_train": len(train_records),
        "num_test": len(test_records),
    }
