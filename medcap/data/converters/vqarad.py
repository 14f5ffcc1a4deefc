"""VQA-RAD (Lau et al. 2018): the official release -> ShareGPT records.

Layout of ``root``::

    VQA_RAD Dataset Public.json        # 2,248 QA; split by ``phrase_type``
    VQA_RAD Image Folder/synpic*.jpg   # 315 images
    mevf_split/trainset.json, testset.json   # the split most papers use (3,064 / 451)
    train_text.json, test_text.json    # optional "text" files: [{"image_name", "text"}]
"""

import os
from dataclasses import replace
from typing import Optional, Sequence

from medcap.data.converters.common import (
    check_converted_record,
    ConvertOptions,
    DatasetFormatError,
    get_optional_text,
    get_response,
    get_text,
    make_record,
    normalize_answer_type,
    read_json_list,
    require_dict,
    text_file_records,
)

PUBLIC_JSON = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"
# official split: phrase_type -> split
OFFICIAL_PHRASE_TYPES = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
MEVF_FILES = {"train": os.path.join("mevf_split", "trainset.json"), "test": os.path.join("mevf_split", "testset.json")}
TEXT_FILES = {"train": "train_text.json", "test": "test_text.json"}
SPLITS = ("train", "test")


def _qa_record(row: dict, path: str, index: int, split: str, options: ConvertOptions) -> Optional[dict]:
    require_dict(row, path, index)
    qid = get_text(row, "qid", path, index)
    answer = get_response(row, "answer", path, index, options)
    if answer is None:
        return None
    record = make_record(
        get_text(row, "question", path, index),
        answer,
        image=get_text(row, "image_name", path, index),
        image_dir=options.image_dir,
        answer_type=normalize_answer_type(row, path, index),
        question_type=get_optional_text(row, "question_type", path, index),
        organ=get_optional_text(row, "image_organ", path, index),
        phrase_type=get_optional_text(row, "phrase_type", path, index),
        lang="en",
        id=f"vqarad-{qid}",
        split=split,
        dataset="vqarad",
    )
    return check_converted_record(record, path, index, options)


def convert_vqarad(
    root: str,
    splits: Sequence[str] = SPLITS,
    *,
    split_scheme: str = "official",
    kind: str = "vqa",
    options: ConvertOptions = ConvertOptions(),
) -> list:
    """Converts VQA-RAD to ShareGPT records.

    Args:
        root (str): the release folder.
        splits (Sequence[str]): among ``train``, ``test``.
        split_scheme (str): ``official`` (train = freeform + para, test = test_freeform +
            test_para) or ``mevf`` (``mevf_split/trainset.json`` / ``testset.json``).
        kind (str): ``vqa`` (question -> answer) or ``text`` (one paragraph per image from
            ``{split}_text.json``).
        options (ConvertOptions): image root (default ``root/VQA_RAD Image Folder``), the
            instruction of ``text`` records, the empty-answer policy.

    Returns:
        list: records in split order, each with ``split``.

    Raises:
        DatasetFormatError: a malformed file / record / field.
        ValueError: an unknown split, scheme or kind.
    """
    options = replace(options, image_dir=os.path.abspath(options.image_dir or os.path.join(root, IMAGE_FOLDER)))
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"vqarad: split {split!r} not available; choose from {', '.join(SPLITS)}")
    if kind == "text":
        return text_file_records(root, TEXT_FILES, splits, image_field="image_name", dataset="vqarad", options=options)
    if kind != "vqa":
        raise ValueError(f"vqarad: kind must be 'vqa' or 'text', got {kind!r}")
    if split_scheme == "mevf":
        records = []
        for split in splits:
            path = os.path.join(root, MEVF_FILES[split])
            rows = read_json_list(path)
            records += [_qa_record(row, path, index, split, options) for index, row in enumerate(rows)]
        return [record for record in records if record is not None]
    if split_scheme != "official":
        raise ValueError(f"vqarad: split_scheme must be 'official' or 'mevf', got {split_scheme!r}")
    path = os.path.join(root, PUBLIC_JSON)
    rows = read_json_list(path)
    records_by_split = {split: [] for split in splits}
    for index, row in enumerate(rows):
        require_dict(row, path, index)
        phrase_type = get_text(row, "phrase_type", path, index)
        if phrase_type not in OFFICIAL_PHRASE_TYPES:
            raise DatasetFormatError(
                f"unknown phrase_type {phrase_type!r}; expected one of {', '.join(OFFICIAL_PHRASE_TYPES)}",
                file=path,
                record=index,
                field="phrase_type",
            )
        split = OFFICIAL_PHRASE_TYPES[phrase_type]
        if split in records_by_split:
            records_by_split[split].append(_qa_record(row, path, index, split, options))
    return [record for split in splits for record in records_by_split[split] if record is not None]

