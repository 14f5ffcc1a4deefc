# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""Generates the synthetic medical VQA / captioning data set (see medcap/data/synthetic/).

Example::

    python tools/make_synthetic_vqa.py --output data/synthetic_vqa
    python tools/make_synthetic_vqa.py --output /tmp/synth --num-images 60 --seed 1 \\
        --sample-grid docs/synthetic_samples.png
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcap.data import synthetic  # noqa: E402  (numpy + PIL only: medcap.data imports lazily)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--num-images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    parser.add_argument(
        "--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST")
    )
    parser.add_argument(
        "--questions-per-image", type=int, default=4, help="VQA questions per image (1-7)"
    )
    parser.add_argument("--no-captions", action="store_true", help="skip caption records")
    parser.add_argument("--sample-grid", help="also save a 4x4 grid of sample images here (PNG)")
    args = parser.parse_args(argv)

    summary = synthetic.make_synthetic_vqa(
        args.output,
        num_images=args.num_images,
        seed=args.seed,
        image_size=args.image_size,
        splits=tuple(args.splits),
        include_captions=not args.no_captions,
        questions_per_image=args.questions_per_image,
    )
    if args.sample_grid:
        synthetic.save_sample_grid(args.output, args.sample_grid)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
