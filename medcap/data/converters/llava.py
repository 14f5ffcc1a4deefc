"""LLaVA instruction JSON <-> ShareGPT records.

LLaVA's format is a JSON list of ``{"id", "image", "conversations": [{"from": "human" | "gpt",
"value"}]}`` with ``<image>`` in a human turn; images are relative to LLaVA's ``--image_folder``.
LLaVA moves the marker to the start of the prompt whatever its place, and ignores other keys.
"""

import copy
from typing import Any, Optional

from medcap.data.converters.common import check_sharegpt_record, DatasetFormatError, read_json_list, require_dict
from medcap.data.schema import GPT, HUMAN, IMAGE_MARKER, ROLES

LEADING_MARKERS = (IMAGE_MARKER + "\n", IMAGE_MARKER)


def is_human_turn(turn: Any) -> bool:
    """A turn object whose speaker is a human one (``human`` / ``user``) by :data:`medcap.data.schema.ROLES`."""
    return isinstance(turn, dict) and isinstance(turn.get("from"), str) and ROLES.get(turn["from"]) == "user"


def add_leading_marker(record: dict) -> dict:
    """A copy of ``record`` whose first human turn starts with ``<image>\\n`` when it has an image
    and no marker yet (where medcap puts an unmarked image)."""
    record = copy.deepcopy(record)
    conversations = record["conversations"]
    has_marker = any(IMAGE_MARKER in turn["value"] for turn in conversations)
    if record.get("image") and not has_marker:
        first_human = next(turn for turn in conversations if is_human_turn(turn))
        first_human["value"] = IMAGE_MARKER + "\n" + first_human["value"]
    return record


def strip_leading_marker(record: dict) -> dict:
    """Removes a ``<image>`` marker that opens the first human turn (the default place)."""
    turns = [turn for turn in record["conversations"] if is_human_turn(turn)]
    if turns and isinstance(turns[0].get("value"), str):
        for marker in LEADING_MARKERS:
            if turns[0]["value"].startswith(marker):
                turns[0]["value"] = turns[0]["value"][len(marker):]
                break
    return record


LLAVA_ROLES = {"user": HUMAN, "assistant": GPT}


def foreign_conversation_record(row: Any, path: str, index: int) -> dict:
    """A copy of another tool's record (LLaVA, PLM) whose ``conversations`` is a non-empty list."""
    record = copy.deepcopy(require_dict(row, path, index))
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise DatasetFormatError("must be a non-empty list of turns", file=path, record=index, field="conversations")
    return record


def finish_foreign_record(record: dict, path: str, index: int, image_dir: Optional[str], split: Optional[str]) -> dict:
    """Drop a leading ``<image>`` marker, default ``meta`` and ``split``, and check the ShareGPT schema."""
    strip_leading_marker(record)
    if image_dir is not None and record.get("image") is not None:
        record.setdefault("meta", f"dir={image_dir}")
    if split is not None:
        record.setdefault("split", split)
    return check_sharegpt_record(record, path, index)


def to_llava(records: list) -> list:
    """ShareGPT records -> LLaVA records: roles ``human`` / ``gpt`` (LLaVA knows no others), a
    leading ``<image>`` marker; extra fields, ``meta`` included, are kept (LLaVA ignores them;
    point its ``--image_folder`` at the ``meta`` dir)."""
    rows = []
    for record in records:
        row = add_leading_marker(record)
        for turn in row["conversations"]:
            turn["from"] = LLAVA_ROLES.get(turn["from"], turn["from"])
        rows.append(row)
    return rows


def from_llava(path: str, *, image_dir: Optional[str] = None, split: Optional[str] = None) -> list:
    """Reads a LLaVA JSON file as ShareGPT records.

    Args:
        path (str): the LLaVA JSON list.
        image_dir (Optional[str]): LLaVA's image folder, written as ``meta`` to records without one.
        split (Optional[str]): split label for records without one.

    Returns:
        list: ShareGPT records.

    Raises:
        DatasetFormatError: a record that is not a valid conversation.
    """
    records = []
    for index, row in enumerate(read_json_list(path)):
        record = foreign_conversation_record(row, path, index)
        records.append(finish_foreign_record(record, path, index, image_dir, split))
    return records
