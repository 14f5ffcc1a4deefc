"""Times converting all of SLAKE (14,028 QA, both languages, all splits) and validating it
(schema, duplicates, lengths, every image decoded and hashed, leakage between splits).

    python bench/convert_slake.py [--data ../shared/data/slake] [--workers 8]

Budget: under 60 s for conversion + validation on a 2-core machine. Exits 1 over budget.
"""

import argparse
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run from a checkout
BUDGET_SECONDS = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = os.path.join(os.environ.get("MEDCAP_DATA", os.path.join(REPO_ROOT, "..", "shared", "data")), "slake")
    parser.add_argument("--data", default=default_data, help="SLAKE release folder")
    parser.add_argument("--workers", type=int, default=8, help="threads for image checks")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        print(f"SLAKE not found at {args.data}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    from medcap.data.converters import ConvertOptions, convert_slake
    from medcap.utils.atomic import atomic_write_json
    from medcap.data.validation import format_report, validate_files

    import_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        records = convert_slake(args.data, ["train", "val", "test"], lang="both", options=ConvertOptions(empty_answers="keep"))
        paths = []
        for split in ("train", "val", "test"):
            paths.append(os.path.join(output_dir, f"slake_{split}.json"))
            atomic_write_json(paths[-1], [record for record in records if record["split"] == split])
        convert_seconds = time.perf_counter() - start

        start = time.perf_counter()
        report = validate_files(paths, num_workers=args.workers, progress=False)
        validate_seconds = time.perf_counter() - start

    print(format_report(report, max_issues=3))
    total = convert_seconds + validate_seconds
    print()
    print(f"records converted:          {len(records)}")
    print(f"image files in the splits:  {int(report.summary['images'].sum())} (each distinct file decoded and hashed once)")
    print(f"import (medcap.data):       {import_seconds:6.2f} s (not counted)")
    print(f"convert + write 3 files:    {convert_seconds:6.2f} s")
    print(f"validate (with images):     {validate_seconds:6.2f} s")
    print(f"total:                      {total:6.2f} s (budget {BUDGET_SECONDS:.0f} s) "
          f"{'OK' if total < BUDGET_SECONDS else 'OVER BUDGET'}")
    return 0 if total < BUDGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
