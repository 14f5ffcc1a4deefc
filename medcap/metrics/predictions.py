"""Scores of a predictions table (a ``predictions.csv`` as a DataFrame): per-row scores,
bootstrap intervals, paired comparison of two tables of the same questions.

The table has ``question``, ``reference``, ``prediction``, ``answer_type`` and optionally
``question_type``, ``image`` (rows naming the same image resample together) and ``id`` (rows are
matched by id when both tables have unique ids). Only VQA rows (answer type CLOSED/OPEN) are
scored here; captioning metrics are corpus-level and get no interval.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from medcap.data.schema import ANSWER_TYPES, first_answer, normalize_answer_type
from medcap.metrics.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Comparison,
    Interval,
    RowScores,
    cluster_ids,
    compare_row_scores,
    score_intervals,
)
from medcap.metrics.vqa import is_binary_key, normalize_answer, vqa_row_scores


PREDICTION_COLUMNS = ("question", "reference", "prediction", "answer_type")


def read_text_csv(path, required: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV table with every cell as text ("None", "NA" stay answers), strictly read.

    UTF-8 with or without a byte-order mark. Every record must have the header's number of fields
    (pandas would silently shift a row with extra fields into an index).

    Args:
        path: the CSV file.
        required (Sequence[str]): columns that must be present.

    Returns:
        pd.DataFrame: the table (str cells; possibly no rows).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the file (and the line): an empty or binary file, a broken quote, a row
            with the wrong number of fields, a repeated or missing column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(f"{path}: a binary file (it holds NUL bytes), not a CSV table")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
                         "expected a UTF-8 CSV table") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = list(reader)
    except csv.Error as error:
        raise ValueError(f"{path}: line {reader.line_num}: not a readable CSV ({error})") from None
    if not rows or rows == [[]]:
        raise ValueError(f"{path}: empty file, expected a header with columns {', '.join(required)}")
    header, records = rows[0], [row for row in rows[1:] if row]  # blank lines are no records
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: the header names column {repeated[0]!r} more than once")
    for number, row in enumerate(records, start=1):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {number} (data rows counted from 1 after the header) has "
                             f"{len(row)} fields, the header {len(header)} ({', '.join(header)}); quote cells "
                             "holding commas")
    for column in required:
        if column not in header:
            raise ValueError(
                f"{path}: missing column {column!r} (found: {', '.join(map(str, header))}; "
                f"required: {', '.join(required)})"
            )
    return pd.DataFrame(records, columns=header, dtype=str)


def read_predictions_csv(path) -> pd.DataFrame:
    """A predictions CSV, every cell as text ("None", "NA" are answers); the required columns checked.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on an empty, binary or malformed file, a missing column (naming the file and the
            column), or a header without data rows ("no rows").
    """
    frame = read_text_csv(path, PREDICTION_COLUMNS)
    if len(frame) == 0:
        raise ValueError(f"{path}: no rows to score (the file holds only the header)")
    return frame


# per-row 0/1 metrics outside vqa.py (McNemar applies)
EXTRA_BINARY_METRICS = frozenset({"well_formed"})
MATCH_COLUMNS = ("question", "reference", "answer_type")


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are computed: ``unit`` auto | image | question, level, resamples, seed."""

    unit: str = "auto"
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED


def _text(frame: pd.DataFrame, column: str) -> List[str]:
    return ["" if value is None or (isinstance(value, float) and value != value) else str(value)
            for value in frame[column].tolist()]


def vqa_row_mask(frame: pd.DataFrame) -> pd.Series:
    """True for the rows whose ``answer_type`` is CLOSED/OPEN (spaces and case ignored)."""
    return frame["answer_type"].fillna("").astype(str).str.strip().str.upper().isin(ANSWER_TYPES)


def frame_row_scores(frame: pd.DataFrame, protocols: Sequence[str] = ("all",)) -> Dict[str, RowScores]:
    """:func:`medcap.metrics.vqa.vqa_row_scores` of the VQA rows of ``frame``.

    Row indices are positions in ``frame`` (0-based, caption rows included in the count).
    """
    mask = vqa_row_mask(frame).to_numpy()
    positions = [index for index, is_vqa in enumerate(mask) if is_vqa]
    vqa = frame[mask]
    question_types = _text(vqa, "question_type") if "question_type" in vqa.columns else None
    scores = vqa_row_scores(_text(vqa, "prediction"), _text(vqa, "reference"), _text(vqa, "answer_type"),
                            question_types, protocols)
    return {key: RowScores([positions[row] for row in rows], values) for key, (rows, values) in scores.items()}


def answer_form_row_scores(frame: pd.DataFrame, train_records: List[Dict[str, Any]]) -> Dict[str, RowScores]:
    """Per-row ``well_formed`` hits: 1 when the answer takes a form seen in training for its
    (answer_type, question_type) (the normalised answers of those train records), else 0.

    Keys ``well_formed`` and ``well_formed/question_type={type}`` (the type as written, empty
    included); rows whose (answer type, question type) has no train record, and caption rows, are
    not counted.
    """
    forms: Dict[tuple, set] = {}
    for record in train_records:
        key = (normalize_answer_type(record.get("answer_type")), str(record.get("question_type", "")))
        forms.setdefault(key, set()).add(normalize_answer(first_answer(record) or ""))
    question_types = _text(frame, "question_type") if "question_type" in frame.columns else [""] * len(frame)
    hits: Dict[str, RowScores] = {}
    for row, (answer_type, question_type, prediction) in enumerate(
        zip(_text(frame, "answer_type"), question_types, _text(frame, "prediction"))
    ):
        key = (normalize_answer_type(answer_type), question_type)
        if key[0] is None or key not in forms:
            continue
        hit = float(normalize_answer(prediction) in forms[key])
        for name in ("well_formed", f"well_formed/question_type={question_type}"):
            scores = hits.setdefault(name, RowScores([], []))
            scores.rows.append(row)
            scores.values.append(hit)
    return hits


def is_binary(key: str) -> bool:
    """Whether the key's per-row scores are 0/1 (a VQA binary metric or ``well_formed``)."""
    return is_binary_key(key) or key.split("/", 1)[0] in EXTRA_BINARY_METRICS


def frame_clusters(frame: pd.DataFrame, unit: str = "auto") -> Tuple[Any, str]:
    """Cluster id per row of ``frame`` (by its ``image`` column) and the unit used; see
    :func:`medcap.metrics.stats.cluster_ids`."""
    images = _text(frame, "image") if "image" in frame.columns else None
    return cluster_ids(len(frame), images, unit)


def bootstrap_description(frame: pd.DataFrame, unit: str, clusters: Any, bootstrap: Bootstrap) -> Dict[str, Any]:
    """What the intervals were computed with (stored beside them and shown in the report)."""
    return {
        "method": "percentile bootstrap (scipy.stats.bootstrap)",
        "resampled": unit,
        "n_questions": int(len(frame)),
        "n_images": int(len(set(clusters.tolist()))) if unit == "image" else None,
        "confidence": bootstrap.confidence,
        "n_resamples": bootstrap.resamples,
        "seed": bootstrap.seed,
    }


def frame_intervals(
    frame: pd.DataFrame, row_scores: Mapping[str, RowScores], bootstrap: Bootstrap = Bootstrap()
) -> Tuple[Dict[str, Interval], Dict[str, Any]]:
    """Percent intervals of every key of ``row_scores`` (rows of ``frame``), and their description.

    Returns:
        Tuple[Dict[str, Interval], Dict[str, Any]]: key -> interval (percent), and
        :func:`bootstrap_description`.
    """
    clusters, unit = frame_clusters(frame, bootstrap.unit)
    intervals = score_intervals(row_scores, clusters, 100.0, bootstrap.confidence, bootstrap.resamples, bootstrap.seed)
    return intervals, bootstrap_description(frame, unit, clusters, bootstrap)


def intervals_json(intervals: Mapping[str, Interval], digits: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    """``{key: {"value", "ci_low", "ci_high", "n", "n_clusters"}}`` for JSON files."""
    return {key: interval.as_dict(digits) for key, interval in intervals.items()}


def align_predictions(a: pd.DataFrame, b: pd.DataFrame, a_name: str = "A", b_name: str = "B") -> pd.DataFrame:
    """``b`` reordered to ``a``'s rows, after checking that both hold the same questions.

    When both tables have an ``id`` column with unique values, rows are matched by id (the
    order may differ); otherwise by position. Matched rows must agree on ``question``,
    ``reference`` and the answer type (normalised; blank = caption for both).

    Returns:
        pd.DataFrame: ``b``'s rows in ``a``'s order, index reset.

    Raises:
        ValueError: naming both tables, when a column is missing, ids differ, the row counts
            differ or a matched row disagrees (naming the row, its id and both values).
    """
    for name, frame in ((a_name, a), (b_name, b)):
        missing = [column for column in MATCH_COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(f"{name}: missing column {missing[0]!r} (needed to match the questions of {a_name} and {b_name})")
    prefix = f"{a_name} and {b_name} are not the same questions"
    a = a.reset_index(drop=True)
    b = b.reset_index(drop=True)
    by_id = "id" in a.columns and "id" in b.columns and a["id"].astype(str).is_unique and b["id"].astype(str).is_unique
    if by_id:
        a_ids, b_ids = a["id"].astype(str), b["id"].astype(str)
        only_a, only_b = sorted(set(a_ids) - set(b_ids)), sorted(set(b_ids) - set(a_ids))
        if only_a or only_b:
            detail = []
            if only_a:
                detail.append(f"{len(only_a)} id(s) only in {a_name} (e.g. {only_a[0]!r})")
            if only_b:
                detail.append(f"{len(only_b)} id(s) only in {b_name} (e.g. {only_b[0]!r})")
            raise ValueError(f"{prefix}: {'; '.join(detail)}")
        b = b.set_index(b_ids).loc[a_ids.tolist()].reset_index(drop=True)
    elif len(a) != len(b):
        raise ValueError(f"{prefix}: {len(a)} rows in {a_name}, {len(b)} in {b_name} (and no unique 'id' column in both)")
    normalise = {"answer_type": lambda value: normalize_answer_type(value) or value.strip()}
    for column in MATCH_COLUMNS:
        fix = normalise.get(column, lambda value: value)
        for row, (x, y) in enumerate(zip(_text(a, column), _text(b, column))):
            if fix(x) != fix(y):
                ident = f" (id {_text(a, 'id')[row]!r})" if "id" in a.columns else ""
                raise ValueError(f"{prefix}: row {row + 1}{ident}: {column} {x!r} in {a_name}, {y!r} in {b_name}")
    return b


def compare_frames(
    a: pd.DataFrame,
    b: pd.DataFrame,
    a_name: str = "A",
    b_name: str = "B",
    protocols: Sequence[str] = ("all",),
    train_records: Optional[List[Dict[str, Any]]] = None,
    bootstrap: Bootstrap = Bootstrap(),
) -> Tuple[Dict[str, Comparison], Dict[str, Any], pd.DataFrame]:
    """B against A on every key: difference with a paired bootstrap interval, McNemar and flips.

    Both sides are scored on ``a``'s rows (``b`` aligned by :func:`align_predictions`); the
    clusters come from ``a``'s ``image`` column, so each resample draws the same questions
    (images) for both.

    Returns:
        Tuple[Dict[str, Comparison], Dict[str, Any], pd.DataFrame]: key -> comparison (percent;
        flipped rows are positions in ``a``), the bootstrap description, and ``b`` aligned.

    Raises:
        ValueError: if the tables are not the same questions (see :func:`align_predictions`).
    """
    b = align_predictions(a, b, a_name, b_name)
    a_scores, b_scores = frame_row_scores(a, protocols), frame_row_scores(b, protocols)
    if train_records is not None:
        a_scores.update(answer_form_row_scores(a, train_records))
        b_scores.update(answer_form_row_scores(b, train_records))
    clusters, unit = frame_clusters(a, bootstrap.unit)
    binary = [key for key in a_scores if is_binary(key)]
    comparisons = compare_row_scores(a_scores, b_scores, binary, clusters, 100.0, bootstrap.confidence,
                                     bootstrap.resamples, bootstrap.seed)
    return comparisons, bootstrap_description(a, unit, clusters, bootstrap), b


def comparison_record(key: str, comparison: Comparison, digits: Optional[int] = None) -> Dict[str, Any]:
    """One flat row of a comparison: metric, a, b, difference, ci_low, ci_high, n, n_clusters,
    and for 0/1 metrics mcnemar_p, right_to_wrong, wrong_to_right (counts)."""
    rounded = lambda v: None if v is None else (round(v, digits) if digits is not None else v)  # noqa: E731
    difference = comparison.difference
    record = {"metric": key, "a": rounded(comparison.a), "b": rounded(comparison.b),
              "difference": rounded(difference.value), "ci_low": rounded(difference.ci_low),
              "ci_high": rounded(difference.ci_high), "n": difference.n, "n_clusters": difference.n_clusters,
              "mcnemar_p": None, "right_to_wrong": None, "wrong_to_right": None}
    if comparison.mcnemar is not None:
        record.update(mcnemar_p=comparison.mcnemar.p_value, right_to_wrong=comparison.mcnemar.right_to_wrong,
                      wrong_to_right=comparison.mcnemar.wrong_to_right)
    return record
