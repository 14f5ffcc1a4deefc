# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Score VQA predictions from a CSV and print one JSON object of metric -> percent.

Usage::

    python tools/score.py PREDICTIONS.csv [--protocol {llava_med,exact,medpalm,medevalkit,all} ...]
        [--intervals [--resample {auto,image,question}] [--resamples N] [--seed S] [--confidence C]]
        [--by COLUMN]

The CSV needs the columns ``question,reference,prediction,answer_type`` (answer_type CLOSED or
OPEN, case and surrounding spaces ignored) and may have ``question_type`` for per-type keys.
Every cell is text: "None", "NA" or "null" are answers, never missing values. Values are
percentages rounded to 2 decimals, null where no row applies. ``--intervals`` adds an
``intervals`` object (key -> value, ci_low, ci_high, n, n_clusters) and a ``bootstrap`` object
(resampled by image when an ``image`` column repeats, else by question). ``--by COLUMN`` prints
instead a CSV with one row per value of the column (n, n_closed, n_open, the headline metrics;
``_ci_low``/``_ci_high``/``_n`` columns with ``--intervals``). See docs/metrics.md.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcap.metrics.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, RESAMPLE_UNITS  # noqa: E402
from medcap.metrics.predictions import PREDICTION_COLUMNS, read_predictions_csv  # noqa: E402
from medcap.metrics.vqa import PROTOCOLS, metrics_for_protocols, normalize_answer_type, vqa_scores  # noqa: E402

ALL_VALUES = "(all)"  # the --by table's last row: every row of the file

REQUIRED_COLUMNS = PREDICTION_COLUMNS
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
    frame = read_predictions_csv(path)
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


def _bootstrap(resample: str, confidence: float, resamples: int, seed: int):
    from medcap.metrics.predictions import Bootstrap

    return Bootstrap(unit=resample, confidence=confidence, resamples=resamples, seed=seed)


def score_csv_with_intervals(
    path: Path,
    protocols: Sequence[str] = ("all",),
    resample: str = "auto",
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Dict[str, Any]:
    """:func:`score_csv`'s keys, plus ``intervals`` (key -> value, ci_low, ci_high, n,
    n_clusters; percent, 2 decimals) and ``bootstrap`` (how: resampled by image or question, level,
    resamples, seed).

    Raises:
        ValueError: as :func:`read_predictions`, or ``resample="image"`` without an image column.
    """
    from medcap.metrics.predictions import frame_intervals, frame_row_scores, intervals_json

    frame = read_predictions(path)
    scores = score_csv(path, protocols)
    intervals, description = frame_intervals(frame, frame_row_scores(frame, protocols),
                                             _bootstrap(resample, confidence, resamples, seed))
    return {**scores, "intervals": intervals_json(intervals, digits=2), "bootstrap": description}


def score_by(
    path: Path,
    column: str,
    protocols: Sequence[str] = ("all",),
    intervals: bool = False,
    resample: str = "auto",
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
):
    """One row per value of ``column`` (in sorted order, then an ``(all)`` row).

    Columns: ``column``, ``n`` (rows), ``n_closed``, ``n_open``, then each headline metric of
    the selected protocols (percent, 2 decimals, empty where no row applies); with
    ``intervals``, a ``resampled`` column (image or question: by image when the group's images
    repeat) and ``{metric}_ci_low``, ``{metric}_ci_high``, ``{metric}_n`` after each metric,
    computed within the group's rows.

    Returns:
        pandas.DataFrame: the table.

    Raises:
        ValueError: if the column is missing (naming the file and the columns found).
    """
    import pandas as pd

    from medcap.metrics.predictions import frame_intervals, frame_row_scores

    frame = read_predictions(path)
    if column not in frame.columns:
        raise ValueError(f"{path}: no column {column!r} to break down by (found: {', '.join(map(str, frame.columns))})")
    metrics = metrics_for_protocols(protocols)
    bootstrap = _bootstrap(resample, confidence, resamples, seed)
    groups = [(value, frame[frame[column] == value]) for value in sorted(frame[column].unique())]
    rows = []
    for value, group in groups + [(ALL_VALUES, frame)]:
        group = group.reset_index(drop=True)
        kinds = group["answer_type"].map(normalize_answer_type)
        row = {column: value, "n": len(group), "n_closed": int((kinds == "CLOSED").sum()),
               "n_open": int((kinds == "OPEN").sum())}
        row_scores = {key: scores for key, scores in frame_row_scores(group, protocols).items() if key in metrics}
        found, description = frame_intervals(group, row_scores, bootstrap) if intervals else ({}, {})
        if intervals:
            row["resampled"] = description["resampled"]
        for metric in metrics:
            values = row_scores[metric].values
            row[metric] = round(100.0 * sum(values) / len(values), 2) if values else None
            if intervals:
                interval = found[metric].as_dict(digits=2)
                row.update({f"{metric}_ci_low": interval["ci_low"], f"{metric}_ci_high": interval["ci_high"],
                            f"{metric}_n": interval["n"]})
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", type=Path, help="CSV with question,reference,prediction,answer_type")
    parser.add_argument(
        "--protocol",
        action="append",
        choices=PROTOCOLS,
        help="protocol group to report (repeatable); default: all",
    )
    parser.add_argument("--intervals", action="store_true",
                        help="add 95%% bootstrap intervals (an 'intervals' and a 'bootstrap' object)")
    parser.add_argument("--by", metavar="COLUMN",
                        help="print a CSV with one row per value of COLUMN (n and the headline metrics)")
    parser.add_argument("--resample", choices=RESAMPLE_UNITS, default="auto",
                        help="resampling unit: image (questions of one image together), question, or auto "
                             "(image when an 'image' column repeats); default auto")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, help="interval level (default 0.95)")
    args = parser.parse_args(argv)
    protocols = args.protocol or ("all",)
    bootstrap = dict(resample=args.resample, confidence=args.confidence, resamples=args.resamples, seed=args.seed)
    try:
        if args.by:
            table = score_by(args.predictions, args.by, protocols, intervals=args.intervals, **bootstrap)
            print(table.to_csv(index=False), end="")
            return 0
        if args.intervals:
            scores = score_csv_with_intervals(args.predictions, protocols, **bootstrap)
        else:
            scores = score_csv(args.predictions, protocols=protocols)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
