"""Shared pieces of the format converters: errors, readers, record building, atomic writes."""

import json
import logging
import os
import tempfile
from typing import Any, Iterable, Mapping, Optional, Sequence

from medcap.data.converters.instructions import caption_instructions

log = logging.getLogger(__name__)

# What converters do with an empty answer / caption: drop the record with a warning (default),
# keep it, or raise.
EMPTY_RESPONSE_POLICIES = ("skip", "keep", "error")

# Splits as named in medcap's ShareGPT files, in output order.
SPLITS = ("train", "val", "test")


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
    """Reads a JSON file; a missing or unparsable file raises with the path in the message."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file '{path}' does not exist")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
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
        with open(path, "r", encoding="utf-8") as f:
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


def get_response(record: dict, field: str, path: str, index: int, empty: str = "skip") -> Optional[str]:
    """The answer / caption of a source record, with the ``empty`` policy for blank ones.

    Args:
        record (dict): the source record.
        field (str): the answer or caption field.
        path (str): source file, for messages.
        index (int): record index, for messages.
        empty (str): ``skip`` (return ``None`` and log a warning naming the record), ``keep``
            (return ``""``) or ``error`` (raise).

    Returns:
        Optional[str]: the text, or ``None`` when the record is to be skipped.
    """
    if empty not in EMPTY_RESPONSE_POLICIES:
        raise ValueError(f"empty answers policy must be one of {', '.join(EMPTY_RESPONSE_POLICIES)}, got {empty!r}")
    value = get_text(record, field, path, index, allow_empty=True)
    if value or empty == "keep":
        return value
    if empty == "error":
        raise DatasetFormatError("is empty", file=path, record=index, field=field)
    log.warning("file '%s', record %d, field '%s': empty; record skipped", path, index, field)
    return None


def get_optional_text(record: dict, field: str, path: str, index: int) -> Optional[str]:
    """Like :func:`get_text`, but a missing or null field gives ``None``."""
    if record.get(field) is None:
        return None
    return get_text(record, field, path, index, allow_empty=True)


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
    record = {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": response}]}
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


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_json_atomic(path: str, data: Any, indent: Optional[int] = 2) -> None:
    """Writes JSON to ``path`` through a temp file in the same directory and ``os.replace``."""
    _atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl_atomic(path: str, rows: Iterable[Any]) -> None:
    """Writes one JSON object per line, atomically."""
    _atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


IMAGE_MARKER = "<image>"
HUMAN, GPT = "human", "gpt"
# speaker names the training dataset accepts (the ShareGPT ones first)
HUMAN_ROLES, GPT_ROLES = (HUMAN, "user"), (GPT, "assistant")


def schema_problems(record: Any) -> list:
    """Checks one record against the ShareGPT schema (the rules of medcap's training dataset).

    Turns alternate ``human`` / ``gpt`` (or ``user`` / ``assistant``) from ``human`` and end with
    ``gpt``; one leading ``system`` turn is allowed. At most one ``<image>`` marker in the human
    turns, and only in a record with an image. ``image`` is a non-empty path (``null`` / ``""``: no image); ``meta`` is ``dir=...``.

    Returns:
        list: ``(field, message)`` pairs, empty when the record is valid.
    """
    if not isinstance(record, dict):
        return [(None, f"record must be an object, got {type(record).__name__}")]
    problems = []
    image = record.get("image")
    if image is not None and not isinstance(image, str):
        problems.append(("image", f"must be a relative path, got {type(image).__name__}"))
    meta = record.get("meta")
    if meta is not None and (not isinstance(meta, str) or not meta.startswith("dir=")):
        problems.append(("meta", "must be text of the form 'dir=/image/root'"))
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return problems + [("conversations", "must be a non-empty list of turns")]
    first_dialogue_turn = 1 if isinstance(conversations[0], dict) and conversations[0].get("from") == "system" else 0
    num_markers = 0
    for turn_index, turn in enumerate(conversations):
        field = f"conversations[{turn_index}]"
        if not isinstance(turn, dict):
            problems.append((field, f"turn must be an object, got {type(turn).__name__}"))
            continue
        if turn_index >= first_dialogue_turn:
            expected_roles = HUMAN_ROLES if (turn_index - first_dialogue_turn) % 2 == 0 else GPT_ROLES
            if turn.get("from") not in expected_roles:
                problems.append((f"{field}.from", f"expected {expected_roles[0]!r} (turns alternate human/gpt), "
                                                  f"got {turn.get('from')!r}"))
        value = turn.get("value")
        if not isinstance(value, str):
            problems.append((f"{field}.value", f"must be text, got {type(value).__name__}"))
            continue
        if turn.get("from") in HUMAN_ROLES:
            num_markers += value.count(IMAGE_MARKER)
    if (len(conversations) - first_dialogue_turn) % 2 or len(conversations) == first_dialogue_turn:
        problems.append(("conversations", "must end with a gpt answer (human/gpt pairs)"))
    if num_markers > 1:
        problems.append(("conversations", f"{num_markers} {IMAGE_MARKER} markers; at most one image per record"))
    if num_markers and not image:
        problems.append(("conversations", f"{IMAGE_MARKER} marker but the record has no image"))
    return problems


def check_sharegpt_record(record: Any, path: str, index: int) -> dict:
    """Raises :class:`DatasetFormatError` at the first schema problem of a record."""
    problems = schema_problems(record)
    if problems:
        field, message = problems[0]
        raise DatasetFormatError(message, file=path, record=index, field=field)
    return record


def image_root(record: dict, image_dir: Optional[str] = None, file_dir: Optional[str] = None) -> Optional[str]:
    """The image root of a record, in the training dataset's order: ``image_dir`` (an override),
    the record's ``meta`` ``dir=``, the folder of the JSON file."""
    if image_dir is not None:
        return image_dir
    meta = record.get("meta")
    if isinstance(meta, str) and meta.startswith("dir="):
        return meta[len("dir="):]
    return file_dir


def resolve_image_path(root: str, image: str) -> Optional[str]:
    """``root/image`` with the root's symlinks resolved, or None when the path leaves the root.

    The check is lexical: ``..`` and absolute paths may not leave the root, while symlinks inside
    it may point anywhere (a Hugging Face snapshot links each file into a blob folder beside it).
    The training dataset and the validator both use this rule.
    """
    real_root = os.path.realpath(os.path.expanduser(root))
    path = os.path.normpath(os.path.join(real_root, image))
    return path if os.path.commonpath([real_root, path]) == real_root else None


def caption_records(
    items: Sequence[tuple],
    *,
    split: Optional[str],
    image_dir: Optional[str],
    instruction: Optional[str] = None,
    sample_instructions: Optional[bool] = None,
    seed: int = 0,
) -> list:
    """Builds caption / "text" records (one paragraph per image).

    Args:
        items (Sequence[tuple]): ``(image, caption, extra_fields)`` triples.
        split (Optional[str]): split label written to each record.
        image_dir (Optional[str]): image root.
        instruction (Optional[str]): a fixed instruction for every record.
        sample_instructions (Optional[bool]): sample instructions (seeded); ``None`` samples for
            the train split only and uses the first instruction otherwise.
        seed (int): instruction sampling seed.

    Returns:
        list: ShareGPT records.
    """
    if instruction is not None:
        prompts = [instruction] * len(items)
    else:
        sample = (split == "train") if sample_instructions is None else sample_instructions
        prompts = caption_instructions(len(items), sample=sample, seed=seed)
    return [
        make_record(prompt, caption, image=image, image_dir=image_dir, split=split, **extra)
        for prompt, (image, caption, extra) in zip(prompts, items)
    ]


def normalize_answer_type(record: dict, path: str, index: int) -> str:
    """``answer_type`` stripped and upper-cased (VQA-RAD has ``"CLOSED "``); OPEN or CLOSED."""
    answer_type = get_text(record, "answer_type", path, index).upper()
    if answer_type not in ("OPEN", "CLOSED"):
        raise DatasetFormatError(
            f"must be OPEN or CLOSED, got {answer_type!r}", file=path, record=index, field="answer_type"
        )
    return answer_type


def text_file_records(
    root: str,
    text_files: Mapping[str, str],
    splits: Sequence[str],
    *,
    image_field: str,
    dataset: str,
    image_dir: Optional[str],
    instruction: Optional[str],
    sample_instructions: Optional[bool],
    seed: int,
    empty_answers: str,
) -> list:
    """Caption records from medcap's "text" files (one paragraph per image, e.g. SLAKE-text).

    Args:
        root (str): the release folder.
        text_files (Mapping[str, str]): split -> JSON file (a list of ``{image_field, "text"}``).
        splits (Sequence[str]): splits to convert.
        image_field (str): the field naming the image (``img_name``, ``image_name``).
        dataset (str): name written to each record and used in its ``id``.
        image_dir (Optional[str]): image root.
        instruction (Optional[str]): a fixed instruction for every record.
        sample_instructions (Optional[bool]): see :func:`caption_records`.
        seed (int): instruction sampling seed.
        empty_answers (str): ``skip``, ``keep`` or ``error`` for empty paragraphs.

    Returns:
        list: ShareGPT records.
    """
    records = []
    for split in splits:
        path = os.path.join(root, text_files[split])
        items = []
        for index, row in enumerate(read_json_list(path)):
            require_dict(row, path, index)
            text = get_response(row, "text", path, index, empty_answers)
            if text is None:
                continue
            extra = {"lang": "en", "id": f"{dataset}-text-{split}-{index}", "dataset": dataset}
            items.append((get_text(row, image_field, path, index), text, extra))
        records += caption_records(items, split=split, image_dir=image_dir, instruction=instruction,
                                   sample_instructions=sample_instructions, seed=seed)
    return records
