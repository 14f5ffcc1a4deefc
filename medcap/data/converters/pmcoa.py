"""PMC-OA (Lin et al. 2023): jsonl ``{"image", "caption"}`` -> ShareGPT caption records.

Layout of ``root``::

    train.jsonl, valid.jsonl, test.jsonl
    caption_T060_filtered_top4_sep_v0_subfigures/*.jpg
"""

import os
from typing import Optional, Sequence

from medcap.data.converters.common import caption_records, get_response, get_text, read_jsonl, require_dict

SPLITS = ("train", "val", "test")
SOURCE_FILES = {"train": "train.jsonl", "val": "valid.jsonl", "test": "test.jsonl"}
IMAGE_FOLDER = "caption_T060_filtered_top4_sep_v0_subfigures"


def convert_pmcoa(
    root: str,
    splits: Sequence[str] = SPLITS,
    *,
    image_dir: Optional[str] = None,
    instruction: Optional[str] = None,
    sample_instructions: Optional[bool] = None,
    seed: int = 0,
    empty_answers: str = "skip",
) -> list:
    """Converts PMC-OA to caption records.

    Args:
        root (str): the release folder.
        splits (Sequence[str]): among ``train``, ``val`` (``valid.jsonl``), ``test``.
        image_dir (Optional[str]): image root; default ``root/caption_T060_filtered_top4_sep_v0_subfigures``.
        instruction (Optional[str]): a fixed instruction for every record.
        sample_instructions (Optional[bool]): see :func:`caption_records`.
        seed (int): instruction sampling seed.
        empty_answers (str): empty captions: ``skip`` (with a warning), ``keep`` or ``error``.

    Returns:
        list: records in split order.
    """
    image_dir = os.path.abspath(image_dir or os.path.join(root, IMAGE_FOLDER))
    records = []
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"pmcoa: split {split!r} not available; choose from {', '.join(SPLITS)}")
        path = os.path.join(root, SOURCE_FILES[split])
        items = []
        for index, row in enumerate(read_jsonl(path)):
            require_dict(row, path, index)
            image = get_text(row, "image", path, index)
            caption = get_response(row, "caption", path, index, empty_answers)
            if caption is not None:
                items.append((image, caption, {"id": image, "dataset": "pmcoa"}))
        records += caption_records(
            items,
            split=split,
            image_dir=image_dir,
            instruction=instruction,
            sample_instructions=sample_instructions,
            seed=seed,
        )
    return records
