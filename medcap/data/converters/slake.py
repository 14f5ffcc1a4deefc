"""SLAKE 1.0 (Liu et al. 2021): the official release -> ShareGPT records.

Layout of ``root``::

    train.json, validate.json, test.json   # English and Chinese rows (``q_lang``)
    imgs/xmlabN/source.jpg                 # 642 images
    train_text.json, validation_text.json, test_text.json   # optional "text" files:
                                           # [{"img_name", "text"}]
"""

import os
from dataclasses import replace
from typing import Sequence

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

QA_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
TEXT_FILES = {"train": "train_text.json", "val": "validation_text.json", "test": "test_text.json"}
SPLITS = ("train", "val", "test")
LANGS = {"en": ("en",), "zh": ("zh",), "both": ("en", "zh")}


def convert_slake(
    root: str,
    splits: Sequence[str] = SPLITS,
    *,
    lang: str = "en",
    kind: str = "vqa",
    options: ConvertOptions = ConvertOptions(),
) -> list:
    """Converts SLAKE to ShareGPT records.

    Args:
        root (str): the release folder.
        splits (Sequence[str]): among ``train``, ``val`` (``validate.json``), ``test``.
        lang (str): ``en``, ``zh`` or ``both`` (``vqa`` kind only).
        kind (str): ``vqa`` (question -> answer) or ``text`` (one paragraph per image).
        options (ConvertOptions): image root (default ``root/imgs``), the instruction of
            ``text`` records, the empty-answer policy (one official English train row, index
            1622, has an empty answer).

    Returns:
        list: records in split order, each with ``split`` and ``lang``.

    Raises:
        DatasetFormatError: a malformed file / record / field.
        ValueError: an unknown split, language or kind.
    """
    options = replace(options, image_dir=os.path.abspath(options.image_dir or os.path.join(root, "imgs")))
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"slake: split {split!r} not available; choose from {', '.join(SPLITS)}")
    if lang not in LANGS:
        raise ValueError(f"slake: lang must be one of {', '.join(LANGS)}, got {lang!r}")
    if kind == "text":
        return text_file_records(root, TEXT_FILES, splits, image_field="img_name", dataset="slake", options=options)
    if kind != "vqa":
        raise ValueError(f"slake: kind must be 'vqa' or 'text', got {kind!r}")
    records = []
    for split in splits:
        path = os.path.join(root, QA_FILES[split])
        for index, row in enumerate(read_json_list(path)):
            require_dict(row, path, index)
            row_lang = get_text(row, "q_lang", path, index)
            if row_lang not in ("en", "zh"):
                raise DatasetFormatError(
                    f"must be 'en' or 'zh', got {row_lang!r}", file=path, record=index, field="q_lang"
                )
            if row_lang not in LANGS[lang]:
                continue
            qid = get_text(row, "qid", path, index)
            answer = get_response(row, "answer", path, index, options)
            if answer is None:
                continue
            record = make_record(
                get_text(row, "question", path, index),
                answer,
                image=get_text(row, "img_name", path, index),
                image_dir=options.image_dir,
                answer_type=normalize_answer_type(row, path, index),
                content_type=get_optional_text(row, "content_type", path, index),
                question_type=get_optional_text(row, "content_type", path, index),  # breakdowns as for VQA-RAD
                modality=get_optional_text(row, "modality", path, index),
                location=get_optional_text(row, "location", path, index),
                base_type=get_optional_text(row, "base_type", path, index),
                lang=row_lang,
                id=f"slake-{qid}",
                split=split,
                dataset="slake",
            )
            records.append(check_converted_record(record, path, index, options))
    return records

