"""Perception-LM (PLM) jsonl <-> ShareGPT records.

PLM's image conversation format is one JSON object a line: ``{"image": "<path>",
"conversations": [{"from": "human", "value"}, {"from": "assistant", "value"}]}``; images are
relative to the dataset's root folder in PLM's config.
"""

import copy
from typing import Optional

from medcap.data.converters.common import DatasetFormatError, read_jsonl
from medcap.data.converters.llava import finish_foreign_record, foreign_conversation_record
from medcap.data.schema import GPT, HUMAN, ROLES, SYSTEM

# ShareGPT speaker -> PLM speaker (a system turn is kept as it is)
PLM_ROLES = {HUMAN: "human", "user": "human", GPT: "assistant", "assistant": "assistant"}
# PLM speaker -> ShareGPT speaker, for every speaker medcap.data.schema accepts
SHAREGPT_ROLES = {speaker: {"user": HUMAN, "assistant": GPT, "system": SYSTEM}[role] for speaker, role in ROLES.items()}


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
        record = foreign_conversation_record(row, path, index)
        for turn_index, turn in enumerate(record["conversations"]):
            field = f"conversations[{turn_index}].from"
            if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
                raise DatasetFormatError(
                    "turn must be an object with a 'from' role", file=path, record=index, field=field
                )
            if turn["from"] not in SHAREGPT_ROLES:
                raise DatasetFormatError(f"unknown role {turn['from']!r}", file=path, record=index, field=field)
            turn["from"] = SHAREGPT_ROLES[turn["from"]]
        records.append(finish_foreign_record(record, path, index, image_dir, split))
    return records
