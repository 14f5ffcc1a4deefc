"""Adds balanced image-level yes/no questions, built from SLAKE's train annotations, to a train file.

Example:
    python tools/make_slake_auxiliary.py --slake ../shared/data/slake \\
        --train-json data/slake/slake_train.json --output data/slake/slake_train_aux.json

Only the images and annotations of SLAKE's ``train.json`` are read (see
:mod:`medcap.data.converters.slake_aux`); check with
``python tools/validate_dataset.py data/slake/slake_train_aux.json data/slake/slake_test.json --no-images``.
"""

import argparse
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medcap.data.converters.slake_aux import auxiliary_records, slake_image_facts, write_mixed_train_file  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slake", required=True, help="the SLAKE release folder (train.json, imgs/)")
    parser.add_argument("--train-json", required=True, help="the converted SLAKE train file (ShareGPT)")
    parser.add_argument("--output", required=True, help="where to write train + auxiliary records")
    parser.add_argument("--pairs", action="store_true", help="ask the true and the false question of every fact")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.abspath(args.output) == os.path.abspath(args.train_json):
        parser.error(f"--output {args.output} is the input file: choose another path")
    facts = slake_image_facts(args.slake)
    aux = auxiliary_records(facts, os.path.join(args.slake, "imgs"), seed=args.seed, pairs=args.pairs)
    total = write_mixed_train_file(args.train_json, aux, args.output)
    counts = Counter((r["content_type"], r["conversations"][1]["value"]) for r in aux)
    print(f"{len(facts)} train images -> {len(aux)} auxiliary questions "
          + ", ".join(f"{t} {a}: {n}" for (t, a), n in sorted(counts.items())))
    print(f"wrote {total} records to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
