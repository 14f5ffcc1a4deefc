"""Preprocesses images offline as medcap does: pad to square above aspect ratio 1.8, resize the
short side to 224 (bicubic), center crop. Mirrors relative paths; skips up-to-date outputs.

    python tools/preprocess_images.py --input-dir ../shared/data/slake/imgs --output-dir data/slake_224
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from medcap.data.preprocess import preprocess_directory  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--size", type=int, default=224, help="output side")
    parser.add_argument("--max-aspect-ratio", type=float, default=1.8, help="pad to a square above this")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that are up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = preprocess_directory(
            args.input_dir,
            args.output_dir,
            size=args.size,
            max_aspect_ratio=args.max_aspect_ratio,
            quality=args.quality,
            overwrite=args.overwrite,
            num_workers=args.workers,
            progress=not args.quiet,
        )
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"written {result.written}, skipped (up to date) {result.skipped}, failed {len(result.failed)}")
    for path, reason in result.failed:
        print(f"failed: '{path}': {reason}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
