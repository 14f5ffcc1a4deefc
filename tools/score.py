# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Score VQA predictions from a CSV and print one JSON object of metric -> percent.

Usage::

    python tools/score.py PREDICTIONS.csv [--protocol {llava_med,exact,medpalm,all} ...]

The CSV needs the columns ``question,reference,prediction,answer_type`` (answer_type CLOSED or
OPEN, case and surrounding spaces ignored) and may have ``question_type`` for per-type keys.
Every cell is text: "None", "NA" or "null" are answers, never missing values. Values are
percentages rounded to 2 decimals, null where no row applies. See docs/metrics.md.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcap.metrics.vqa import PROTOCOLS, normalize_answer_type, vqa_scores  # noqa: E402

REQUIRED_COLUMNS = ("question", "reference", "prediction", "answer_type")
QUESTION_TYPE_COLUMN = "question_type"


def read_predictions(path: Path):
    """Read and validate a predictions CSV.

    Args:
        path (Path): the CSV file.

    Returns:
        pandas.DataFrame: all columns as str, empty cells as "".

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if a required column is missing (naming the file and the column) or a row's
            answer_type is not CLOSED/OPEN (naming the file, the row and the value).
    """
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file, expected a header with columns {', '.join(REQUIRED_COLUMNS)}")
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise ValueError(
                f"{path}: missing column {column!r} (found: {', '.join(map(str, frame.columns))}; "
                f"required: {', '.join(REQUIRED_COLUMNS)})"
            )
    for row, answer_type in enumerate(frame["answer_type"], start=1):
        if normalize_answer_type(answer_type) is None:
            raise ValueError(
                f"{path}: row {row} (data rows counted from 1 after the header): "
                f"answer_type {answer_type!r} is not CLOSED or OPEN"
            )
    return frame


def score_csv(path: Path, protocols: Sequence[str] = ("all",)) -> dict[str, Optional[float]]:
    """Score a predictions CSV: metric name -> percent rounded to 2 decimals, or None.

    Args:
        path (Path): the CSV file (see :func:`read_predictions`).
        protocols (Sequence[str]): protocol groups (``medcap.metrics.vqa.PROTOCOLS``).

    Returns:
        dict[str, Optional[float]]: the scores of :func:`medcap.metrics.vqa.vqa_scores`.
    """
    frame = read_predictions(path)
    question_types = (
        frame[QUESTION_TYPE_COLUMN].tolist() if QUESTION_TYPE_COLUMN in frame.columns else None
    )
    scores = vqa_scores(
        predictions=frame["prediction"].tolist(),
        references=frame["reference"].tolist(),
        answer_types=frame["answer_type"].tolist(),
        question_types=question_types,
        protocols=protocols,
    )
    return {name: None if value is None else round(value, 2) for name, value in scores.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="CSV with question,reference,prediction,answer_type")
    parser.add_argument(
        "--protocol",
        action="append",
        choices=PROTOCOLS,
        help="protocol group to report (repeatable); default: all",
    )
    args = parser.parse_args(argv)
    try:
        scores = score_csv(args.predictions, protocols=args.protocol or ("all",))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
