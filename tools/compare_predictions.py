# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Compare two prediction files on the same questions: B - A per metric, paired.

Usage::

    python tools/compare_predictions.py A.csv B.csv [--protocol {llava_med,exact,medpalm,medevalkit,all} ...]
        [--train-json TRAIN.json] [--all-keys] [--flips-metric exact_match] [--max-flips 20]
        [--json OUT.json] [--resample {auto,image,question}] [--resamples N] [--seed S] [--confidence C]

Prints, per metric, A, B, the difference B - A with a paired bootstrap interval (each resample
draws the same questions, or the same images when images hold several questions, for both
files), McNemar's exact test for the 0/1 metrics (closed accuracy, exact match, ...) with the
counts of questions that went right->wrong and wrong->right, then the flipped questions of one
metric. Refuses (exit 1, naming both files) when the files are not the same questions: rows
are matched by ``id`` when both have unique ids, else by position, and must agree on question,
reference and answer type. ``--json`` writes everything (every breakdown key, the ids of the
flipped questions of every 0/1 metric). See docs/metrics.md.
"""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcap.metrics.stats import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, RESAMPLE_UNITS  # noqa: E402
from medcap.metrics.predictions import read_predictions_csv  # noqa: E402
from medcap.metrics.vqa import PROTOCOLS  # noqa: E402

def _row_label(frame, row: int) -> str:
    return str(frame["id"].iloc[row]) if "id" in frame.columns else f"row {row + 1}"


def compare_files(
    a_path: Path,
    b_path: Path,
    protocols: Sequence[str] = ("all",),
    train_json: Optional[Path] = None,
    resample: str = "auto",
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Dict[str, Any]:
    """The comparison of two prediction files as a JSON-ready dict.

    Returns:
        Dict[str, Any]: ``a``, ``b`` (paths), ``n_questions``, ``matched_by`` (id or position),
        ``bootstrap`` (how the intervals were computed), ``metrics`` (one record per key: metric,
        a, b, difference, ci_low, ci_high, n, n_clusters, mcnemar_p, right_to_wrong,
        wrong_to_right; percent, 2 decimals) and ``flips`` (for every 0/1 key, the question ids
        of each direction; ``rows`` holds question, reference and both predictions per id).

    Raises:
        FileNotFoundError, ValueError: a missing file or column, or files that are not the same
            questions (the message names both files).
    """
    from medcap.metrics.predictions import Bootstrap, compare_frames, comparison_record

    a, b = read_predictions_csv(a_path), read_predictions_csv(b_path)
    train_records = json.loads(Path(train_json).read_text()) if train_json else None

    comparisons, description, b = compare_frames(
        a, b, str(a_path), str(b_path), protocols, train_records,
        Bootstrap(unit=resample, confidence=confidence, resamples=resamples, seed=seed),
    )
    by_id = "id" in a.columns and "id" in b.columns and a["id"].is_unique and b["id"].is_unique
    flips: Dict[str, Dict[str, List[str]]] = {}
    flipped_rows = set()
    for key, comparison in comparisons.items():
        if comparison.mcnemar is None:
            continue
        flips[key] = {"right_to_wrong": [_row_label(a, row) for row in comparison.right_to_wrong],
                      "wrong_to_right": [_row_label(a, row) for row in comparison.wrong_to_right]}
        flipped_rows.update(comparison.right_to_wrong + comparison.wrong_to_right)
    rows = {_row_label(a, row): {"question": a["question"].iloc[row], "reference": a["reference"].iloc[row],
                                 "a": a["prediction"].iloc[row], "b": b["prediction"].iloc[row]}
            for row in sorted(flipped_rows)}
    return {
        "a": str(a_path), "b": str(b_path), "n_questions": len(a), "matched_by": "id" if by_id else "position",
        "bootstrap": description,
        "metrics": [comparison_record(key, comparison, digits=2) for key, comparison in comparisons.items()],
        "flips": flips, "rows": rows,
    }


def _number(value: Optional[float], signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_report(result: Dict[str, Any], all_keys: bool = False, flips_metric: str = "exact_match",
                  max_flips: int = 20) -> str:
    """The comparison as text: a header, one line per metric, then the flipped questions."""
    boot = result["bootstrap"]
    unit = (f"by image ({boot['n_images']} images for {boot['n_questions']} questions)" if boot["resampled"] == "image"
            else f"by question ({boot['n_questions']} questions)")
    level = round(100 * boot["confidence"])
    lines = [
        f"A: {result['a']}",
        f"B: {result['b']}",
        f"{result['n_questions']} questions matched by {result['matched_by']}; paired percentile bootstrap, "
        f"{boot['n_resamples']} resamples, seed {boot['seed']}, resampled {unit}",
        "",
        f"{'metric':<44} {'n':>5} {'A':>7} {'B':>7} {'B-A':>7}  {f'{level}% CI':<17} {'McNemar p':>9} "
        f"{'right->wrong':>12} {'wrong->right':>12}",
    ]
    for record in result["metrics"]:
        if not all_keys and "/" in record["metric"]:
            continue
        interval = (f"[{_number(record['ci_low'], True)}, {_number(record['ci_high'], True)}]"
                    if record["ci_low"] is not None else "-")
        binary = record["mcnemar_p"] is not None
        p_value = format(record["mcnemar_p"], ".4g") if binary else "-"
        right_to_wrong = str(record["right_to_wrong"]) if binary else "-"
        wrong_to_right = str(record["wrong_to_right"]) if binary else "-"
        lines.append(
            f"{record['metric']:<44} {record['n']:>5} {_number(record['a']):>7} {_number(record['b']):>7} "
            f"{_number(record['difference'], True):>7}  {interval:<17} {p_value:>9} {right_to_wrong:>12} {wrong_to_right:>12}"
        )
    flips = result["flips"].get(flips_metric)
    if flips is not None:
        lines += ["", f"questions that flipped on {flips_metric}: {len(flips['right_to_wrong'])} right->wrong, "
                      f"{len(flips['wrong_to_right'])} wrong->right"]
        for direction in ("right_to_wrong", "wrong_to_right"):
            ids = flips[direction]
            if not ids:
                continue
            lines.append(f"{direction.replace('_to_', '->')}:")
            for ident in ids[:max_flips]:
                row = result["rows"][ident]
                lines.append(f"  {ident} | {row['question']} | reference: {row['reference']} | A: {row['a']} | B: {row['b']}")
            if len(ids) > max_flips:
                lines.append(f"  ... {len(ids) - max_flips} more (--max-flips, or --json for all)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="predictions CSV A (e.g. base, or epoch k)")
    parser.add_argument("b", type=Path, help="predictions CSV B on the same questions (e.g. tuned, or epoch k+1)")
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, help="protocol group (repeatable); default: all")
    parser.add_argument("--train-json", type=Path, help="training records: adds well_formed")
    parser.add_argument("--all-keys", action="store_true", help="print the breakdown keys too (answer/question type)")
    parser.add_argument("--flips-metric", default="exact_match", help="the 0/1 metric whose flipped questions are listed")
    parser.add_argument("--max-flips", type=int, default=20, help="flipped questions listed per direction (default 20)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the full comparison as JSON")
    parser.add_argument("--resample", choices=RESAMPLE_UNITS, default="auto",
                        help="resampling unit (default auto: by image when an 'image' column repeats)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"bootstrap seed (default {DEFAULT_SEED})")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, help="interval level (default 0.95)")
    args = parser.parse_args(argv)
    try:
        result = compare_files(args.a, args.b, args.protocol or ("all",), args.train_json, args.resample,
                               args.confidence, args.resamples, args.seed)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(result, args.all_keys, args.flips_metric, args.max_flips))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
