"""Linear probes of image features: does a tower trained through a frozen LLM see more than it did before?

Usage::

    python tools/linear_probe.py --dataset slake --data-dir ../shared/data/slake \\
        --tower base:outputs/smollm2_slake --tower outputs/smollm2_slake/epoch_2 \\
        [--task slake/modality ...] [--features mean-patch|pooled] [--cache-dir outputs/probe_cache] \\
        [--json outputs/probe_slake.json] [--slake-lang en|zh] [--image-size 224] [--seed 0]

Towers (``--tower``, repeatable; the first is the reference of the paired comparison): ``base:RUN_DIR``
(the run's untrained start, same seed and init as the recipe), ``RUN_DIR/epoch_N``, or any
``local-dir:``/``hf-hub:``/``timm:``/open_clip name. Tasks: ``slake/{modality,location,organ_group}``,
``vqarad/organ``, ``synthetic/{modality,lesion_presence,lesion_count}`` (medcap/probe/labels.py; every
task of ``--dataset`` by default). Splits are by image and checked disjoint by path and by content hash.

For each task and tower: scikit-learn logistic regression on standardised features, C in
{0.01, 0.1, 1, 10} chosen on the validation split, refitted on train + val; test accuracy and
macro-F1 (%) with 95% bootstrap intervals over test images, and for every tower after the first the
paired accuracy difference to the first (bootstrap interval, McNemar's exact p). Features are cached
in ``--cache-dir`` by tower fingerprint and image SHA-256. Prints a Markdown table; ``--json`` writes
every number (and the per-image hits).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcap.data.images import open_clip_image_transform  # noqa: E402
from medcap.metrics.stats import mcnemar_exact, paired_bootstrap_difference  # noqa: E402
from medcap.probe.classifier import C_GRID, fit_probe  # noqa: E402
from medcap.probe.features import FEATURE_MODES, extract_features, file_sha256, tower_fingerprint  # noqa: E402
from medcap.probe.labels import check_image_disjoint, load_task, split_indices, tasks_of  # noqa: E402
from medcap.probe.towers import resolve_tower  # noqa: E402
from medcap.utils.atomic import atomic_write_json  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=("slake", "vqarad", "synthetic"))
    parser.add_argument("--data-dir", required=True, help="the dataset's folder (SLAKE json + imgs/, VQA-RAD, synthetic)")
    parser.add_argument("--tower", action="append", required=True, help="base:RUN_DIR, RUN_DIR/epoch_N or a tower name")
    parser.add_argument("--task", action="append", help="a task of the dataset (default: all of them)")
    parser.add_argument("--features", default="mean-patch", choices=FEATURE_MODES)
    parser.add_argument("--cache-dir", default="outputs/probe_cache", help="feature cache ('' for none)")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--slake-lang", default="en", choices=("en", "zh"),
                        help="SLAKE: images of questions in this language (the official split is image-disjoint "
                             "within one language only: Chinese train questions use 72 of the English test images)")
    parser.add_argument("--image-size", type=int, default=224, help="input side for timm:/open_clip-named towers")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="VQA-RAD train/val split, solver and bootstrap seed")
    return parser.parse_args(argv)


def _fmt(value: float, low: float, high: float) -> str:
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """One line per (task, tower), the majority-class baseline on each task's first line."""
    lines = ["| task | tower | C | accuracy % [95% CI] | macro-F1 % [95% CI] | vs first tower (acc, McNemar p) | train-majority % | test images |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        diff = row.get("vs_first")
        versus = f"{diff['difference']:+.1f} [{diff['ci_low']:+.1f}, {diff['ci_high']:+.1f}], p={diff['p_value']:.2g}" if diff else ""
        lines.append(f"| {row['task']} | {row['tower']} | {row['c']:g} | {_fmt(row['accuracy'], row['accuracy_ci_low'], row['accuracy_ci_high'])} "
                     f"| {_fmt(row['macro_f1'], row['macro_f1_ci_low'], row['macro_f1_ci_high'])} | {versus} "
                     f"| {row['majority_accuracy']:.1f} | {row['n_test']} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    tasks = args.task or tasks_of(args.dataset)
    for task in tasks:
        if task not in tasks_of(args.dataset):
            raise SystemExit(f"--task {task} is not a task of --dataset {args.dataset} ({', '.join(tasks_of(args.dataset))})")
    task_items = {task: load_task(task, Path(args.data_dir), seed=args.seed, slake_lang=args.slake_lang) for task in tasks}
    paths = sorted({item.path for items in task_items.values() for item in items})
    image_hash = {path: file_sha256(path) if path.is_file() else None for path in paths}
    missing = [path for path, digest in image_hash.items() if digest is None]
    if missing:
        raise SystemExit(f"{len(missing)} images not found, e.g. {missing[0]}")
    for task, items in task_items.items():
        check_image_disjoint(items, [image_hash[item.path] for item in items])

    rows: List[Dict[str, Any]] = []
    summary = {"dataset": args.dataset, "data_dir": args.data_dir, "features": args.features, "c_grid": list(C_GRID),
               "splits": {task: {s: len(i) for s, i in split_indices(items).items()} for task, items in task_items.items()}}
    features_of: Dict[str, Any] = {}
    for spec in args.tower:
        tower, transform_args = resolve_tower(spec, image_size=args.image_size)
        fingerprint = tower_fingerprint(tower, args.features, transform_args)
        cache = Path(args.cache_dir) / f"{fingerprint[:32]}.npz" if args.cache_dir else None
        features = extract_features(tower, args.features, paths, [image_hash[p] for p in paths],
                                    open_clip_image_transform(**transform_args), cache_path=cache,
                                    batch_size=args.batch_size, desc=spec)
        features_of[spec] = (dict(zip(paths, range(len(paths)))), features, fingerprint)
    for task, items in task_items.items():
        splits = split_indices(items)
        first = None
        for spec in args.tower:
            row_of, features, fingerprint = features_of[spec]
            result = fit_probe(features[[row_of[item.path] for item in items]], [item.label for item in items],
                               splits, seed=args.seed).as_dict()
            row = {"task": task, "tower": spec, "features": args.features, "fingerprint": fingerprint, **result}
            if first is None:
                first = row
            else:
                difference = paired_bootstrap_difference(first["hits"], row["hits"], seed=args.seed).scaled(100)
                test = mcnemar_exact(first["hits"], row["hits"])
                row["vs_first"] = {"tower": first["tower"], "difference": difference.value, "ci_low": difference.ci_low,
                                   "ci_high": difference.ci_high, "p_value": test.p_value}
            rows.append(row)
    print(markdown_table(rows))
    if args.json:
        atomic_write_json(args.json, {**summary, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
