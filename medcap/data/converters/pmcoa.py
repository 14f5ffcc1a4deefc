"""PMC-OA (Lin et al. 2023): jsonl ``{"image", "caption"}`` -> ShareGPT caption records.

Layout of ``root``::

    train.jsonl, valid.jsonl, test.jsonl
    caption_T060_filtered_top4_sep_v0_subfigures/*.jpg
"""

import os
from dataclasses import replace
from typing import Sequence

from medcap.data.converters.common import (
    caption_records,
    ConvertOptions,
    get_response,
    get_text,
    read_jsonl,
    require_dict,
)

SPLITS = ("train", "val", "test")
SOURCE_FILES = {"train": "train.jsonl", "val": "valid.jsonl", "test": "test.jsonl"}
IMAGE_FOLDER = "caption_T060_filtered_top4_sep_v0_subfigures"


def convert_pmcoa(
    root: str,
    splits: Sequence[str] = SPLITS,
    *,
    options: ConvertOptions = ConvertOptions(),
) -> list:
    """Converts PMC-OA to caption records.

    Args:
        root (str): the release folder.
        splits (Sequence[str]): among ``train``, ``val`` (``valid.jsonl``), ``test``.
        options (ConvertOptions): image root (default
            ``root/caption_T060_filtered_top4_sep_v0_subfigures``), instructions, the
            empty-caption policy.

    Returns:
        list: records in split order.
    """
    options = replace(options, image_dir=os.path.abspath(options.image_dir or os.path.join(root, IMAGE_FOLDER)))
    records = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"pmcoa: split {split!r} not available; choose from {', '.join(SPLITS)}")
        path = os.path.join(root, SOURCE_FILES[split])
        items = []
        for index, row in enumerate(read_jsonl(path)):
            require_dict(row, path, index)
            image = get_text(row, "image", path, index)
            caption = get_response(row, "caption", path, index, options)
            if caption is not None:
                items.append((index, image, caption, {"id": image, "dataset": "pmcoa"}))
        records += caption_records(items, path=path, split=split, options=options)
    return records
