"""Validates ShareGPT dataset files: schema, images, answers, duplicates, lengths, split leakage.

It refuses what training refuses: a file that is not a JSON list (a JSON Lines file is named, with
the converter command), an empty list, records breaking the schema (image paths leaving the image
root, symlinks included), images that are missing, undecodable or over --max-image-pixels, and
records whose first question and answer exceed --max-seq-len. Duplicates, records truncated after
their first answer, multi-frame and tiny images are warnings (training keeps them and warns).

Give every split of a dataset to also check leakage between them:
    python tools/validate_dataset.py data/vqarad_train.json data/vqarad_test.json \\
        --tokenizer path/to/tokenizer.json --max-seq-len 400 --json report.json

Exit status: 0 when there are no errors (warnings such as leakage or duplicates are allowed
unless --strict), 1 otherwise, 2 for a missing tokenizer file.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from medcap.utils.atomic import atomic_write_json  # noqa: E402
from medcap.data.images import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402
from medcap.data.validation import format_report, validate_files  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="ShareGPT JSON files (e.g. train and test)")
    parser.add_argument("--image-dir",
                        help="image root overriding each record's meta dir= (without either: the file's folder)")
    parser.add_argument("--no-images", action="store_true", help="skip image existence / decode / hash checks")
    parser.add_argument("--tokenizer", help="Hugging Face tokenizer.json for exact token lengths")
    parser.add_argument("--max-seq-len", type=int,
                        help="error for records whose first question and answer are longer (training refuses "
                             "them), warning for records longer only in later turns (training truncates them)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                        help=f"larger images are errors, as in training (default {DEFAULT_MAX_IMAGE_PIXELS})")
    parser.add_argument("--image-tokens", type=int, default=0, help="tokens an image adds to a record's length")
    parser.add_argument("--workers", type=int, default=8, help="threads for image checks")
    parser.add_argument("--strict", action="store_true", help="warnings also fail")
    parser.add_argument("--json", help="write the full report as JSON here ('-' for stdout)")
    parser.add_argument("--max-issues", type=int, default=20, help="issues of each severity to print")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = validate_files(
            args.files,
            image_dir=args.image_dir,
            check_image_files=not args.no_images,
            tokenizer_path=args.tokenizer,
            max_seq_len=args.max_seq_len,
            image_tokens=args.image_tokens,
            num_workers=args.workers,
            progress=not args.quiet,
            max_image_pixels=args.max_image_pixels,
        )
    except FileNotFoundError as err:  # the tokenizer; data problems are reported, not raised
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_report(report, max_issues=args.max_issues))
        if args.json:
            atomic_write_json(args.json, report.to_dict())
    return 0 if report.passed(strict=args.strict) else 1


if __name__ == "__main__":
    sys.exit(main())
