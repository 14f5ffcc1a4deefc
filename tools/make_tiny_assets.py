"""Write the tiny CPU assets (tokenizer, random 2-layer decoder, tiny vision tower, 8 records).

    python tools/make_tiny_assets.py --output assets/tiny

Used by ``recipes/configs/medcap/tiny_cpu.yaml`` and by the tests; seeded, so re-runs give
identical files.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medcap.utils.tiny import write_tiny_assets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("assets/tiny"), help="output directory")
    args = parser.parse_args()
    for name, path in write_tiny_assets(args.output).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
