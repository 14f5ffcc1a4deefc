"""Perception-LM (PLM) jsonl <-> ShareGPT records.

PLM's image conversation format is one JSON object a line: ``{"image": "<path>",
"conversations": [{"from": "human", "value"}, {"from": "assistant", "value"}]}``; images are
relative to the dataset's root folder in PLM's config.
"""

import copy
from typing import Optional

from medcap.data.converters.common import (
    check_sharegpt_record,
    DatasetFormatError,
    GPT,
    HUMAN,
    read_jsonl,
    require_dict,
)
from medcap.data.converters.llava import strip_leading_marker

PLM_ROLES = {HUMAN: "human", "user": "human", GPT: "assistant", "assistant": "assistant"}
SHAREGPT_ROLES = {"human": HUMAN, "user": HUMAN, "assistant": GPT, "gpt": GPT, "system": "system"}


def to_plm(records: list) -> list:
    """ShareGPT records -> PLM rows (``gpt`` turns become ``assistant``; other fields kept)."""
    rows = []
    for record in records:
        row = copy.deepcopy(record)
        for turn in row["conversations"]:
            turn["from"] = PLM_ROLES.get(turn["from"], turn["from"])
        rows.append(row)
    return rows


def from_plm(path: str, *, image_dir: Optional[str] = None, split: Optional[str] = None) -> list:
    """Reads a PLM jsonl file as ShareGPT records.

    Args:
        path (str): the jsonl file.
        image_dir (Optional[str]): PLM's image root, written as ``meta`` to records without one.
        split (Optional[str]): split label for records without one.

    Returns:
        list: ShareGPT records.

    Raises:
        DatasetFormatError: a record that is not a valid conversation.
    """
    records = []
    for index, row in enumerate(read_jsonl(path)):
        record = copy.deepcopy(require_dict(row, path, index))
        conversations = record.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise DatasetFormatError(
                "must be a non-empty list of turns", file=path, record=index, field="conversations"
            )
        for turn_index, turn in enumerate(conversations):
            field = f"conversations[{turn_index}].from"
            if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
                raise DatasetFormatError(
                    "turn must be an object with a 'from' role", file=path, record=index, field=field
                )
            if turn["from"] not in SHAREGPT_ROLES:
                raise DatasetFormatError(f"unknown role {turn['from']!r}", file=path, record=index, field=field)
            turn["from"] = SHAREGPT_ROLES[turn["from"]]
        strip_leading_marker(record)
        if image_dir is not None and record.get("image") is not None:
            record.setdefault("meta", f"dir={image_dir}")
        if split is not None:
            record.setdefault("split", split)
        records.append(check_sharegpt_record(record, path, index))
    return records
