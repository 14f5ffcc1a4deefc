"""Converts a dataset to medcap's ShareGPT JSON (or to LLaVA JSON / PLM jsonl).

Examples:
    python tools/convert_to_sharegpt.py --dataset vqarad --input ../shared/data/vqa_rad \\
        --split test --output data/vqarad_test.json
    python tools/convert_to_sharegpt.py --dataset slake --input ../shared/data/slake --lang en \\
        --output 'data/slake_{split}.json'
    python tools/convert_to_sharegpt.py --dataset sharegpt --input data/slake_train.json \\
        --to llava --output data/slake_train_llava.json
"""

import argparse
import logging
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from medcap.data import converters  # noqa: E402
from medcap.data.converters.common import EMPTY_RESPONSE_POLICIES, select_splits  # noqa: E402
from medcap.utils.atomic import atomic_write_json, atomic_write_jsonl  # noqa: E402

SPLITS = ("train", "val", "test", "all")  # the names a '{split}' output can take
DATASETS = ("vqarad", "slake", "rocov2", "pmcoa", "llava", "plm", "csv", "hf", "sharegpt")
SPLIT_SOURCES = {
    "vqarad": converters.vqarad.SPLITS,
    "slake": converters.slake.SPLITS,
    "rocov2": converters.rocov2.SPLITS,
    "pmcoa": converters.pmcoa.SPLITS,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="source format")
    parser.add_argument("--input", required=True, help="dataset folder, or the file for llava/plm/csv/sharegpt")
    parser.add_argument("--output", required=True,
                        help="output file; a '{split}' in the name writes one file per split")
    parser.add_argument("--to", default="sharegpt", choices=("sharegpt", "llava", "plm"), help="output format")
    parser.add_argument("--split", default="all",
                        help="train, val, test, a comma list or all; for single-file sources the "
                             "label given to records (with --split-column, the split kept)")
    parser.add_argument("--split-scheme", default="official", choices=("official", "mevf"), help="vqarad")
    parser.add_argument("--lang", default="en", choices=("en", "zh", "both"), help="slake")
    parser.add_argument("--kind", default="vqa", choices=("vqa", "text"),
                        help="vqarad / slake: question->answer, or one paragraph per image from {split}_text.json")
    parser.add_argument("--image-dir", help="image root (overrides the source's default; meta dir=)")
    parser.add_argument("--instruction", help="fixed instruction for caption records")
    parser.add_argument("--instruction-mode", default="auto", choices=("auto", "sample", "first"),
                        help="caption instructions: auto = sampled for train, first for val/test")
    parser.add_argument("--seed", type=int, default=0, help="instruction sampling seed")
    parser.add_argument("--empty-answers", default="skip", choices=EMPTY_RESPONSE_POLICIES,
                        help="records with an empty answer/caption: skip (with a warning), keep, error")
    parser.add_argument("--image-column", default="image", help="csv / hf")
    parser.add_argument("--question-column", default="question", help="csv / hf")
    parser.add_argument("--answer-column", default="answer", help="csv / hf")
    parser.add_argument("--caption-column", help="csv / hf: caption records from this column")
    parser.add_argument("--split-column", help="csv: column naming each row's split")
    parser.add_argument("--keep-columns", default="", help="csv / hf: comma list of columns to keep")
    parser.add_argument("--indent", type=int, default=2, help="JSON indent (0 for compact)")
    return parser.parse_args(argv)


def convert_options(args: argparse.Namespace) -> converters.ConvertOptions:
    """The options every dataset converter shares, from the command line."""
    return converters.ConvertOptions(
        image_dir=args.image_dir,
        instruction=args.instruction,
        sample_instructions={"auto": None, "sample": True, "first": False}[args.instruction_mode],
        seed=args.seed,
        empty_answers=args.empty_answers,
    )


def load_records(args: argparse.Namespace) -> list:
    """Reads the source named by ``args.dataset`` as ShareGPT records."""
    options = convert_options(args)
    if args.dataset in SPLIT_SOURCES:
        splits = select_splits(args.split, SPLIT_SOURCES[args.dataset], args.dataset)
        if args.dataset == "vqarad":
            return converters.convert_vqarad(
                args.input, splits, split_scheme=args.split_scheme, kind=args.kind, options=options
            )
        if args.dataset == "slake":
            return converters.convert_slake(args.input, splits, lang=args.lang, kind=args.kind, options=options)
        if args.dataset == "rocov2":
            return converters.convert_rocov2(args.input, splits, options=options)
        return converters.convert_pmcoa(args.input, splits, options=options)
    split = None if args.split == "all" else args.split
    if args.dataset in ("llava", "plm", "sharegpt"):
        reader = {"llava": converters.from_llava, "plm": converters.from_plm, "sharegpt": converters.read_sharegpt}
        return reader[args.dataset](args.input, image_dir=args.image_dir, split=split)
    columns = converters.TableColumns(
        image=args.image_column,
        question=args.question_column,
        answer=args.answer_column,
        caption=args.caption_column,
        keep=[column for column in args.keep_columns.split(",") if column],
    )
    if args.dataset == "csv":
        return converters.convert_csv(
            args.input, split=split, split_column=args.split_column, columns=columns, options=options
        )
    return converters.convert_hf(args.input, split=split, columns=columns, options=options)


def refuse_overwriting_input(source: str, output: str) -> None:
    """Refuses an output that would replace the input: the input file itself (also through a
    link), or, for a dataset folder, any existing file inside it (the release stays as it was).

    ``{split}`` outputs are checked for every split name.

    Raises:
        ValueError: naming the output and the input.
    """
    candidates = {output.format(split=split) for split in SPLITS} if "{split}" in output else {output}
    real_source = os.path.realpath(source)
    for target in sorted(candidates):
        if not os.path.exists(target):
            continue
        if os.path.isfile(source) and (os.path.samefile(target, source) or os.path.realpath(target) == real_source):
            raise ValueError(f"--output {target} is the input file {source}: converting would overwrite the input; "
                             "choose another output file")
        if os.path.isdir(source) and os.path.commonpath([real_source, os.path.realpath(target)]) == real_source:
            raise ValueError(f"--output {target} is a file of the input dataset folder {source}: converting would "
                             "overwrite it; write outside the dataset folder")


def write_records(records: list, output: str, to: str, indent: int, source: str = "") -> list:
    """Writes records (atomically) in the ``to`` format; returns ``(path, count)`` pairs.

    Raises:
        ValueError: an output that is the input (see :func:`refuse_overwriting_input`).
        WriteError: a full disk or an unwritable folder (naming the output; nothing partial is left).
    """
    if "{split}" in output:
        groups = {}
        for record in records:
            groups.setdefault(record.get("split", "all"), []).append(record)
        targets = [(output.format(split=split), group) for split, group in groups.items()]
    else:
        targets = [(output, records)]
    for path, _ in targets:
        if source:
            refuse_overwriting_input(source, path)
    for path, group in targets:
        if to == "plm":
            atomic_write_jsonl(path, converters.to_plm(group))
        else:
            rows = converters.to_llava(group) if to == "llava" else group
            atomic_write_json(path, rows, indent=indent or None)
    return [(path, len(group)) for path, group in targets]


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        refuse_overwriting_input(args.input, args.output)  # before reading: a mistake costs nothing
        records = load_records(args)
        written = write_records(records, args.output, args.to, args.indent, source=args.input)
    except (converters.DatasetFormatError, ValueError, ImportError, OSError) as err:  # OSError: WriteError, a missing file
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = Counter(record.get("split", "-") for record in records)
    print(f"{len(records)} records ({', '.join(f'{split}: {n}' for split, n in counts.items())})")
    for path, count in written:
        print(f"wrote {count} records to {path} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
