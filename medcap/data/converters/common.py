"""Shared pieces of the format converters: options, errors, readers, record building.

The record rules are :mod:`medcap.data.schema`'s and the writers :mod:`medcap.utils.atomic`'s; this
module only applies them to converter input and output.
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from medcap.data.converters.instructions import caption_instructions
from medcap.data.schema import is_json_lines, ANSWER_TYPES, check_record, GPT, HUMAN
from medcap.data.schema import normalize_answer_type as _normalize_answer_type

log = logging.getLogger(__name__)

# What converters do with an empty answer / caption: drop the record with a warning (default),
# keep it, or raise.
EMPTY_RESPONSE_POLICIES = ("skip", "keep", "error")

# Splits as named in medcap's ShareGPT files, in output order.
SPLITS = ("train", "val", "test")



@dataclass(frozen=True)
class ConvertOptions:
    """What every dataset converter takes besides its source: the image root, the captioning
    instruction and the empty-answer policy.

    Attributes:
        image_dir (Optional[str]): image root overriding the source's default (``meta: dir=``).
        instruction (Optional[str]): a fixed instruction for every caption record.
        sample_instructions (Optional[bool]): sample caption instructions (seeded); ``None`` samples
            for the train split only and uses the first instruction otherwise.
        seed (int): instruction sampling seed.
        empty_answers (str): an empty answer / caption: ``skip`` the record with a warning naming
            it (default), ``keep`` it, or ``error``.

    Raises:
        ValueError: an unknown empty-answers policy, an empty instruction, or a seed or
            ``sample_instructions`` of the wrong type.
    """

    image_dir: Optional[str] = None
    instruction: Optional[str] = None
    sample_instructions: Optional[bool] = None
    seed: int = 0
    empty_answers: str = "skip"

    def __post_init__(self):
        if self.empty_answers not in EMPTY_RESPONSE_POLICIES:
            raise ValueError(
                f"empty answers policy must be one of {', '.join(EMPTY_RESPONSE_POLICIES)}, got {self.empty_answers!r}"
            )
        if self.instruction is not None and (not isinstance(self.instruction, str) or not self.instruction.strip()):
            raise ValueError(f"instruction must be non-empty text, got {self.instruction!r}")
        if self.sample_instructions not in (None, True, False):
            raise ValueError(f"sample_instructions must be None, True or False, got {self.sample_instructions!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.image_dir is not None:
            object.__setattr__(self, "image_dir", os.fspath(self.image_dir))


class DatasetFormatError(ValueError):
    """Malformed dataset input. The message names the file, the record index and the field.

    Args:
        message (str): what is wrong.
        file (Optional[str]): the input file.
        record (Optional[int]): 0-based index of the record (line for jsonl, row for tables).
        field (Optional[str]): the offending field.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        record: Optional[int] = None,
        field: Optional[str] = None,
    ):
        self.file, self.record, self.field = file, record, field
        where = []
        if file is not None:
            where.append(f"file '{file}'")
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def read_json(path: str) -> Any:
    """Reads a UTF-8 JSON file (a byte-order mark is allowed); a missing or unparsable file raises
    with the path in the message, a JSON Lines file naming ``--dataset plm``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file '{path}' does not exist")
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            text = f.read()
        return json.loads(text)
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"not valid UTF-8 JSON ({err})", file=path) from None
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and is_json_lines(text):
            raise DatasetFormatError(
                "this is JSON Lines (one record a line, e.g. the Perception-LM format), not a JSON list: "
                "read it with --dataset plm", file=path) from None
        raise DatasetFormatError(f"not valid UTF-8 JSON ({err})", file=path) from None


def read_json_list(path: str) -> list:
    """Reads a JSON file whose top level must be a list of records."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetFormatError(f"top level must be a list of records, got {type(data).__name__}", file=path)
    return data


def read_jsonl(path: str) -> list:
    """Reads a JSON-lines file (blank lines skipped); record indices count non-blank lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file '{path}' does not exist")
    records = []
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetFormatError(
                        f"line {line_number} is not valid JSON ({err})", file=path, record=len(records)
                    ) from None
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"not valid UTF-8 ({err})", file=path) from None
    return records


def read_records(path: str) -> list:
    """Reads a list of records from a ``.jsonl`` file or a JSON list file."""
    return read_jsonl(path) if path.endswith(".jsonl") else read_json_list(path)


def require_dict(record: Any, path: str, index: int) -> dict:
    """Checks that a record is a JSON object."""
    if not isinstance(record, dict):
        raise DatasetFormatError(f"record must be an object, got {type(record).__name__}", file=path, record=index)
    return record


def get_text(record: dict, field: str, path: str, index: int, *, allow_empty: bool = False) -> str:
    """Returns ``record[field]`` as stripped text; numbers (e.g. VQA-RAD's answer ``4``) become text.

    Raises:
        DatasetFormatError: the field is missing, not text / number, or empty (unless allowed).
    """
    if field not in record:
        raise DatasetFormatError("missing", file=path, record=index, field=field)
    value = record[field]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DatasetFormatError(f"must be text, got {type(value).__name__}", file=path, record=index, field=field)
    value = value.strip()
    if not value and not allow_empty:
        raise DatasetFormatError("is empty", file=path, record=index, field=field)
    return value


def get_response(record: dict, field: str, path: str, index: int, options: ConvertOptions) -> Optional[str]:
    """The answer / caption of a source record, with the options' policy for blank ones.

    Args:
        record (dict): the source record.
        field (str): the answer or caption field.
        path (str): source file, for messages.
        index (int): record index, for messages.
        options (ConvertOptions): ``empty_answers``: ``skip`` (return ``None`` and log a warning
            naming the record), ``keep`` (return ``""``) or ``error`` (raise).

    Returns:
        Optional[str]: the text, or ``None`` when the record is to be skipped.
    """
    value = get_text(record, field, path, index, allow_empty=True)
    if value or options.empty_answers == "keep":
        return value
    if options.empty_answers == "error":
        raise DatasetFormatError("is empty", file=path, record=index, field=field)
    log.warning("file '%s', record %d, field '%s': empty; record skipped", path, index, field)
    return None


def get_optional_text(record: dict, field: str, path: str, index: int) -> Optional[str]:
    """Like :func:`get_text`, but a missing or null field gives ``None``."""
    if record.get(field) is None:
        return None
    return get_text(record, field, path, index, allow_empty=True)


# the gpt turn of a record built by :func:`make_record`, as :func:`medcap.data.schema.check_record` names it
ANSWER_FIELD = "conversations[1].value"


def make_record(
    prompt: str,
    response: str,
    *,
    image: Optional[str] = None,
    image_dir: Optional[str] = None,
    **extra: Any,
) -> dict:
    """Builds one single-turn ShareGPT record.

    Args:
        prompt (str): the human turn (question or instruction).
        response (str): the gpt turn (answer or caption).
        image (Optional[str]): image path relative to ``image_dir``.
        image_dir (Optional[str]): image root, written as ``meta: "dir=<image_dir>"``.
        **extra: fields kept for evaluation (``answer_type``, ``split``, ``id`` ...); ``None`` values
            are dropped.

    Returns:
        dict: ``{"conversations": [...], "image": ..., "meta": ..., **extra}``.
    """
    record = {"conversations": [{"from": HUMAN, "value": prompt}, {"from": GPT, "value": response}]}
    if image is not None:
        record["image"] = image
    if image_dir is not None:
        record["meta"] = f"dir={image_dir}"
    record.update({key: value for key, value in extra.items() if value is not None})
    return record


def select_splits(split: str, available: Sequence[str], source: str) -> list:
    """Resolves ``--split`` (one name, a comma list, or ``all``) against the splits a source has.

    Raises:
        ValueError: a requested split that the source does not have.
    """
    if split == "all":
        return list(available)
    wanted = [name.strip() for name in split.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in available]
    if unknown or not wanted:
        raise ValueError(f"{source}: split {split!r} not available; choose from {', '.join(available)} or all")
    return wanted


def schema_problems(record: Any) -> list:
    """The problems of one record by :func:`medcap.data.schema.check_record` (the training dataset's rules).

    Returns:
        list: ``(field, message)`` pairs in field order, empty when the record is valid.
    """
    return [(problem.field, problem.message) for problem in check_record(record)[1]]


def check_sharegpt_record(record: Any, path: str, index: int) -> dict:
    """Raises :class:`DatasetFormatError` at the first schema problem of a record; returns the record."""
    problems = check_record(record)[1]
    if problems:
        field = None if problems[0].field == "<record>" else problems[0].field
        raise DatasetFormatError(problems[0].message, file=path, record=index, field=field)
    return record


def check_converted_record(record: dict, path: str, index: int, options: ConvertOptions) -> dict:
    """Raises :class:`DatasetFormatError` at the first schema problem of a record built from source
    row ``index`` of ``path`` (an image path leaving its root, two ``<image>`` markers ...); an empty
    answer passes when the options keep empty answers."""
    for problem in check_record(record)[1]:
        if not (options.empty_answers == "keep" and problem.field == ANSWER_FIELD and not problem.fatal):
            raise DatasetFormatError(problem.message, file=path, record=index, field=problem.field)
    return record


def caption_records(items: Sequence[tuple], *, path: str, split: Optional[str], options: ConvertOptions) -> list:
    """Builds caption / "text" records (one paragraph per image) and checks each.

    Args:
        items (Sequence[tuple]): ``(index, image, caption, extra_fields)``; ``index`` is the row in
            ``path``, for messages.
        path (str): the source file, for messages.
        split (Optional[str]): split label written to each record.
        options (ConvertOptions): image root (``image_dir``) and instructions: a fixed
            ``instruction``, else sampled with ``seed`` (``sample_instructions``; ``None`` samples
            for the train split only and uses the first instruction otherwise).

    Returns:
        list: ShareGPT records.
    """
    if options.instruction is not None:
        prompts = [options.instruction] * len(items)
    else:
        sample = (split == "train") if options.sample_instructions is None else options.sample_instructions
        prompts = caption_instructions(len(items), sample=sample, seed=options.seed)
    return [
        check_converted_record(
            make_record(prompt, caption, image=image, image_dir=options.image_dir, split=split, **extra),
            path, index, options,
        )
        for prompt, (index, image, caption, extra) in zip(prompts, items)
    ]


def normalize_answer_type(record: dict, path: str, index: int) -> str:
    """``answer_type`` by :func:`medcap.data.schema.normalize_answer_type` (VQA-RAD has ``"CLOSED "``).

    Raises:
        DatasetFormatError: the field is missing, empty, or not one of ``ANSWER_TYPES``.
    """
    value = get_text(record, "answer_type", path, index)
    answer_type = _normalize_answer_type(value)
    if answer_type is None:
        raise DatasetFormatError(
            f"must be {' or '.join(ANSWER_TYPES)}, got {value.upper()!r}", file=path, record=index, field="answer_type"
        )
    return answer_type


def text_file_records(
    root: str, text_files: Mapping[str, str], splits: Sequence[str], *, image_field: str, dataset: str,
    options: ConvertOptions,
) -> list:
    """Caption records from medcap's "text" files (one paragraph per image, e.g. SLAKE-text).

    Args:
        root (str): the release folder.
        text_files (Mapping[str, str]): split -> JSON file (a list of ``{image_field, "text"}``).
        splits (Sequence[str]): splits to convert.
        image_field (str): the field naming the image (``img_name``, ``image_name``).
        dataset (str): name written to each record and used in its ``id``.
        options (ConvertOptions): image root, instructions, empty-paragraph policy.

    Returns:
        list: ShareGPT records.
    """
    records = []
    for split in splits:
        path = os.path.join(root, text_files[split])
        items = []
        for index, row in enumerate(read_json_list(path)):
            require_dict(row, path, index)
            text = get_response(row, "text", path, index, options)
            if text is None:
                continue
            extra = {"lang": "en", "id": f"{dataset}-text-{split}-{index}", "dataset": dataset}
            items.append((index, get_text(row, image_field, path, index), text, extra))
        records += caption_records(items, path=path, split=split, options=options)
    return records
