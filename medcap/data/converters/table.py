"""Tables (CSV files, Hugging Face ``datasets`` saved to disk) -> ShareGPT records.

Any table with image / question / answer columns (VQA) or image / caption columns (captions);
the column names are a :class:`TableColumns`.
"""

import os
from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence, Tuple

import pandas as pd

from medcap.data.converters.common import (
    caption_records,
    check_converted_record,
    ConvertOptions,
    DatasetFormatError,
    get_optional_text,
    get_response,
    get_text,
    make_record,
)

# names a saved DatasetDict may use for medcap's splits
HF_SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a table hold what.

    Attributes:
        image (str): image paths (relative to the options' ``image_dir``).
        question (Optional[str]): questions (VQA records).
        answer (Optional[str]): answers (VQA records).
        caption (Optional[str]): captions; when set, caption records (instruction -> caption).
        keep (Tuple[str, ...]): extra columns copied to each record (e.g. ``answer_type``).

    Raises:
        ValueError: neither a caption column nor both a question and an answer column.
    """

    image: str = "image"
    question: Optional[str] = "question"
    answer: Optional[str] = "answer"
    caption: Optional[str] = None
    keep: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.caption is None and (self.question is None or self.answer is None):
            raise ValueError("give question and answer columns (VQA) or a caption column (captions)")
        object.__setattr__(self, "keep", tuple(self.keep))


def read_csv_rows(path: str, required_columns: Iterable[str]) -> list:
    """Reads a CSV as a list of ``{column: text}`` rows (no NA conversion), checking columns.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetFormatError: unparsable CSV, or a required column is missing.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file '{path}' does not exist")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"not a readable CSV ({err})", file=path) from None
    for column in required_columns:
        if column not in frame.columns:
            raise DatasetFormatError(
                f"column missing; the table has {', '.join(map(str, frame.columns))}", file=path, field=column
            )
    return frame.to_dict(orient="records")


def _image_path(row: dict, column: str, path: str, index: int) -> str:
    value = row.get(column)
    if isinstance(value, dict) and "path" in value:  # a datasets Image(decode=False) cell
        value = value["path"]
        row = {column: value}
    if value is not None and not isinstance(value, (str, int, float)):
        raise DatasetFormatError(
            f"must hold an image path, got {type(value).__name__} (save decoded images to files first)",
            file=path,
            record=index,
            field=column,
        )
    return get_text(row, column, path, index)


def convert_rows(
    rows: Sequence[dict],
    path: str,
    *,
    split: Optional[str],
    columns: TableColumns = TableColumns(),
    options: ConvertOptions = ConvertOptions(),
    row_numbers: Optional[Sequence[int]] = None,
) -> list:
    """Converts table rows to VQA records, or to caption records when ``columns.caption`` is set.

    Args:
        rows (Sequence[dict]): the table, one dict per row.
        path (str): where the rows came from, for error messages.
        split (Optional[str]): split label of these rows.
        columns (TableColumns): which columns hold the image, question, answer or caption.
        options (ConvertOptions): image root written to ``meta``, caption instructions, the
            empty-answer policy.
        row_numbers (Optional[Sequence[int]]): record index of each row in its file, for error
            messages; default ``0, 1, ...``.

    Returns:
        list: ShareGPT records.
    """
    options = replace(options, image_dir=os.path.abspath(options.image_dir) if options.image_dir else None)
    records, items = [], []
    for index, row in zip(row_numbers or range(len(rows)), rows):
        if not isinstance(row, dict):
            raise DatasetFormatError(f"row must be a mapping, got {type(row).__name__}", file=path, record=index)
        image = _image_path(row, columns.image, path, index)
        extra = {column: get_optional_text(row, column, path, index) for column in columns.keep}
        if split is not None:
            extra["split"] = split
        response = get_response(row, columns.caption or columns.answer, path, index, options)
        if response is None:
            continue
        if columns.caption is not None:
            extra.pop("split", None)
            items.append((index, image, response, extra))
            continue
        record = make_record(
            get_text(row, columns.question, path, index), response, image=image, image_dir=options.image_dir, **extra
        )
        records.append(check_converted_record(record, path, index, options))
    if columns.caption is not None:
        return caption_records(items, path=path, split=split, options=options)
    return records


def convert_csv(
    path: str,
    *,
    split: Optional[str] = None,
    split_column: Optional[str] = None,
    columns: TableColumns = TableColumns(),
    options: ConvertOptions = ConvertOptions(),
) -> list:
    """Converts a CSV table; ``split_column`` splits rows by its values (``valid`` -> ``val``).

    Args:
        path (str): the CSV file.
        split (Optional[str]): label for every row, or with ``split_column`` the only split kept.
        split_column (Optional[str]): column naming each row's split.
        columns (TableColumns): see :func:`convert_rows`.
        options (ConvertOptions): see :func:`convert_rows`.

    Returns:
        list: ShareGPT records.
    """
    rows = read_csv_rows(path, [columns.image] + ([split_column] if split_column else []))
    if split_column is None:
        return convert_rows(rows, path, split=split, columns=columns, options=options)
    row_numbers_by_split = {}
    for index, row in enumerate(rows):
        name = HF_SPLIT_NAMES.get(row[split_column], row[split_column])
        row_numbers_by_split.setdefault(name, []).append(index)
    records = []
    for name, row_numbers in row_numbers_by_split.items():
        if split is None or name == split:
            split_rows = [rows[index] for index in row_numbers]
            records += convert_rows(
                split_rows, path, split=name, columns=columns, options=options, row_numbers=row_numbers
            )
    return records


def convert_hf(
    path: str,
    *,
    split: Optional[str] = None,
    columns: TableColumns = TableColumns(),
    options: ConvertOptions = ConvertOptions(),
) -> list:
    """Converts a Hugging Face dataset saved with ``save_to_disk`` (``datasets.load_from_disk``).

    Args:
        path (str): the saved ``Dataset`` or ``DatasetDict`` folder.
        split (Optional[str]): for a ``DatasetDict``, the only split kept (``train``, ``val``,
            ``test``; ``validation`` / ``valid`` count as ``val``); for a ``Dataset``, its label.
        columns (TableColumns): see :func:`convert_rows`.
        options (ConvertOptions): see :func:`convert_rows`.

    Returns:
        list: ShareGPT records.

    Raises:
        ImportError: ``datasets`` is not installed (it is an optional dependency).
    """
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "the 'hf' source reads Hugging Face datasets and needs the optional package `datasets` "
            "(pip install datasets); it is not installed"
        ) from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset folder '{path}' does not exist")
    loaded = datasets.load_from_disk(path)
    if not isinstance(loaded, datasets.DatasetDict):
        return convert_rows(loaded.to_list(), path, split=split, columns=columns, options=options)
    records = []
    for source_name, dataset in loaded.items():
        name = HF_SPLIT_NAMES.get(source_name, source_name)
        if split is None or name == split:
            records += convert_rows(
                dataset.to_list(), f"{path}[{source_name}]", split=name, columns=columns, options=options
            )
    return records
