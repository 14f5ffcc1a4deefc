"""ROCOv2 (Rückert et al. 2024): captions CSV ``ID,Caption`` -> ShareGPT caption records.

Layout of ``root``::

    train_captions.csv, valid_captions.csv, test_captions.csv
    images/train/{ID}.jpg, images/valid/{ID}.jpg, images/test/{ID}.jpg
"""

import os
from dataclasses import replace
from typing import Sequence

from medcap.data.converters.common import caption_records, ConvertOptions, get_response, get_text
from medcap.data.converters.table import read_csv_rows

SPLITS = ("train", "val", "test")
SOURCE_SPLIT = {"train": "train", "val": "valid", "test": "test"}


def convert_rocov2(
    root: str,
    splits: Sequence[str] = SPLITS,
    *,
    options: ConvertOptions = ConvertOptions(),
) -> list:
    """Converts ROCOv2 to caption records.

    Args:
        root (str): the release folder.
        splits (Sequence[str]): among ``train``, ``val`` (``valid``), ``test``.
        options (ConvertOptions): ``image_dir`` is the folder holding ``train/``, ``valid/``,
            ``test/`` (default ``root/images``); instructions; the empty-caption policy.

    Returns:
        list: records in split order; ``image`` is ``{ID}.jpg`` under ``images/{split}``.
    """
    images_root = os.path.abspath(options.image_dir or os.path.join(root, "images"))
    records = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"rocov2: split {split!r} not available; choose from {', '.join(SPLITS)}")
        path = os.path.join(root, f"{SOURCE_SPLIT[split]}_captions.csv")
        items = []
        for index, row in enumerate(read_csv_rows(path, ("ID", "Caption"))):
            image_id = get_text(row, "ID", path, index)
            caption = get_response(row, "Caption", path, index, options)
            if caption is not None:
                items.append((index, f"{image_id}.jpg", caption, {"id": image_id, "dataset": "rocov2"}))
        split_options = replace(options, image_dir=os.path.join(images_root, SOURCE_SPLIT[split]))
        records += caption_records(items, path=path, split=split, options=split_options)
    return records
