"""ROCOv2 (Rückert et al. 2024): captions CSV ``ID,Caption`` -> ShareGPT caption records.

Layout of ``root``::

    train_captions.csv, valid_captions.csv, test_captions.csv
    images/train/{ID}.jpg, images/valid/{ID}.jpg, images/test/{ID}.jpg
"""

import os
from typing import Optional, Sequence

from medcap.data.converters.common import caption_records, get_response, get_text
from medcap.data.converters.table import read_csv_rows

SPLITS = ("train", "val", "test")
SOURCE_SPLIT = {"train": "train", "val": "valid", "test": "test"}


def convert_rocov2(
    root: str,
    splits: Sequence[str] = SPLITS,
    *,
    image_dir: Optional[str] = None,
    instruction: Optional[str] = None,
    sample_instructions: Optional[bool] = None,
    seed: int = 0,
    empty_answers: str = "skip",
) -> list:
    """Converts ROCOv2 to caption records.

    Args:
        root (str): the release folder.
        splits (Sequence[str]): among ``train``, ``val`` (``valid``), ``test``.
        image_dir (Optional[str]): folder holding ``train/``, ``valid/``, ``test/``;
            default ``root/images``.
        instruction (Optional[str]): a fixed instruction for every record.
        sample_instructions (Optional[bool]): see :func:`caption_records`.
        seed (int): instruction sampling seed.
        empty_answers (str): empty captions: ``skip`` (with a warning), ``keep`` or ``error``.

    Returns:
        list: records in split order; ``image`` is ``{ID}.jpg`` under ``images/{split}``.
    """
    images_root = os.path.abspath(image_dir or os.path.join(root, "images"))
    records = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"rocov2: split {split!r} not available; choose from {', '.join(SPLITS)}")
        path = os.path.join(root, f"{SOURCE_SPLIT[split]}_captions.csv")
        items = []
        for index, row in enumerate(read_csv_rows(path, ("ID", "Caption"))):
            image_id = get_text(row, "ID", path, index)
            caption = get_response(row, "Caption", path, index, empty_answers)
            if caption is not None:
                items.append((f"{image_id}.jpg", caption, {"id": image_id, "dataset": "rocov2"}))
        records += caption_records(
            items,
            split=split,
            image_dir=os.path.join(images_root, SOURCE_SPLIT[split]),
            instruction=instruction,
            sample_instructions=sample_instructions,
            seed=seed,
        )
    return records
