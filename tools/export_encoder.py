"""Export a run's fine-tuned vision tower as an open_clip model directory, a timm trunk, the projector and a model card.

Usage::

    python tools/export_encoder.py outputs/smollm2_slake/epoch_2 --output exports/slake_epoch_2 \\
        [--probe-json outputs/probe_slake.json] [--no-timm]

Then, outside medcap::

    model, preprocess = open_clip.create_model_from_pretrained("local-dir:exports/slake_epoch_2")
    trunk = timm.create_model("local-dir:exports/slake_epoch_2/timm", pretrained=True)

A tower that came from a directory with a text tower (BiomedCLIP) keeps that text tower and its
config; otherwise a seeded placeholder text tower fills open_clip's slot (the card says which).
Prints a JSON summary (files written, text tower, largest feature gap of the reload check).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcap.export.encoder import export_encoder  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="RUN_DIR/epoch_N (its parent holds the run's config.yaml)")
    parser.add_argument("--output", required=True, help="export directory (replaced whole)")
    parser.add_argument("--probe-json", action="append", default=[],
                        help="a tools/linear_probe.py --json result to quote in the model card (repeatable)")
    parser.add_argument("--no-timm", action="store_true", help="skip the timm trunk")
    args = parser.parse_args(argv)
    probe_rows = []
    for path in args.probe_json:
        with open(path, encoding="utf-8") as f:
            probe_rows += json.load(f)["results"]
    summary = export_encoder(Path(args.checkpoint), Path(args.output), probe_results=probe_rows, with_timm=not args.no_timm)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
