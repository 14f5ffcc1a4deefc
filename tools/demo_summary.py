"""Print and save the result table of a run evaluated by recipes/generate.py.

    python tools/demo_summary.py --run-dir outputs/smollm2_synthetic --data-dir data/synthetic_vqa
    python tools/demo_summary.py --run-dir outputs/smollm2_vqarad --train-json data/vqarad/vqarad_train.json \
        --test-json data/vqarad/vqarad_test.json --extra-eval "blank images=outputs/smollm2_vqarad/eval_blank"

Reads ``{run_dir}/eval/metrics_by_epoch.json`` (from ``recipes/generate.py``), the baselines saved
beside the synthetic data (``baselines.json``; or computed from ``--train-json``/``--test-json`` by
:func:`medcap.metrics.baselines.compute_baselines`: the majority answer per question type and per
question text, learned on train, scored with the model rows' answer normalisation) and the training
logs; ``--extra-eval NAME=DIR`` adds the rows of another evaluation (e.g. blank images); prints one table (closed
accuracy, open exact match, answers in a trained form, BLEU-4 / ROUGE-L / CIDEr on captions, for
the base model, each epoch and the baselines), writes it as ``results.md`` / ``results.json`` and
plots the training loss (``loss.png``) in the eval folder.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medcap.generation.report import plot_training_loss  # noqa: E402
from medcap.metrics.baselines import compute_baselines  # noqa: E402
from medcap.utils.atomic import atomic_write_text  # noqa: E402

COLUMNS = {
    "closed_accuracy": "closed acc %",
    "open_exact_match": "open EM %",
    "well_formed": "well-formed %",
    "BLEU-4": "BLEU-4",
    "ROUGE-L": "ROUGE-L",
    "CIDEr": "CIDEr",
    "samples_per_second": "samples/s",
}


def summary_table(
    metrics_rows: List[Dict[str, Any]], baselines: Optional[Dict[str, Any]], extra: Optional[Dict[str, List[Dict[str, Any]]]] = None
) -> pd.DataFrame:
    """One row per checkpoint, per extra evaluation's checkpoint and per baseline; headline metrics as columns."""
    named = [(row["checkpoint"], row) for row in metrics_rows]
    for name, rows in (extra or {}).items():
        named += [(f"{row['checkpoint']} ({name})", row) for row in rows]
    rows = [{"model": model, **{label: row.get(key) for key, label in COLUMNS.items()}} for model, row in named]
    for name in ("majority", "question_only"):
        if baselines and name in baselines:
            base = baselines[name]
            headline = {key: base[key] for key in ("closed_accuracy", "open_exact_match")}
            rows.append({"model": f"{name} baseline",
                         **{COLUMNS[key]: None if value is None else 100 * value for key, value in headline.items()}})
    return pd.DataFrame(rows).set_index("model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="training output_dir")
    parser.add_argument("--data-dir", type=Path, help="synthetic data folder with baselines.json")
    parser.add_argument("--eval-dir", type=Path, help="default: RUN_DIR/eval")
    parser.add_argument("--train-json", type=Path, help="compute baselines from these records (no baselines.json)")
    parser.add_argument("--test-json", type=Path)
    parser.add_argument("--extra-eval", action="append", default=[], metavar="NAME=DIR",
                        help="add the rows of another recipes/generate.py output dir")
    args = parser.parse_args()
    eval_dir = args.eval_dir or args.run_dir / "eval"
    metrics_path = eval_dir / "metrics_by_epoch.json"
    if not metrics_path.is_file():
        sys.exit(f"{metrics_path} not found: run recipes/generate.py on {args.run_dir} first")
    metrics_rows = json.loads(metrics_path.read_text())
    baselines_path = args.data_dir / "baselines.json" if args.data_dir else None
    baselines = json.loads(baselines_path.read_text()) if baselines_path and baselines_path.is_file() else None
    if baselines is None and args.train_json and args.test_json:
        baselines = compute_baselines(json.loads(args.train_json.read_text()), json.loads(args.test_json.read_text()))
    extra = {}
    for item in args.extra_eval:
        name, _, directory = item.partition("=")
        extra[name] = json.loads((Path(directory) / "metrics_by_epoch.json").read_text())
    table = summary_table(metrics_rows, baselines, extra)
    text = table.round(2).to_string(na_rep="-")
    print(text)
    atomic_write_text(eval_dir / "results.md", text + "\n")
    atomic_write_text(eval_dir / "results.json", table.reset_index().to_json(orient="records", indent=1))
    log_dir = args.run_dir / "logs"
    if log_dir.is_dir():
        plot_training_loss(log_dir, eval_dir / "loss.png")
    print(f"\nwrote {eval_dir / 'results.md'}, {eval_dir / 'loss.png'}, {eval_dir / 'metrics_by_epoch.png'}, {eval_dir / 'report.html'}")


if __name__ == "__main__":
    main()
