"""The one home of medcap's ShareGPT record rules (torch-free).

A record::

    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}, ...],
     "image": "rel/path.jpg",            # optional: null or "" means a text-only record
     "meta": "dir=/images/root",         # optional image root
     ...}                                # extra fields (answer_type, ...) are kept for evaluation

Rules, checked by :func:`check_record` and nowhere else:

* speakers: ``human``/``user``, ``gpt``/``assistant``, and one ``system`` turn, first only;
* the dialogue alternates human/gpt starting with human and ends with a gpt answer;
* no turn of the dialogue is empty (a ``system`` turn may be);
* ``image`` is a relative path string; ``meta`` (when present) is ``dir=<root>``;
* the image root is, in order: the ``image_dir`` override, the record's ``meta`` ``dir=``, the
  folder of the JSON file; the image path may not leave its root (``..`` or absolute paths),
  while symlinks inside the root may point anywhere (Hugging Face snapshots link into blobs);
* at most one ``<image>`` marker in the human turns, and only in a record with an image.

The training dataset, the validator, the converters, generation and the synthetic data all call
:func:`check_record`, so "the validator reports no problem" and "the training dataset accepts the
record" are the same statement (a property test holds them to it).
"""

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

IMAGE_MARKER = "<image>"
HUMAN, GPT, SYSTEM = "human", "gpt", "system"
# speaker name in a file -> torchtune message role
ROLES = {HUMAN: "user", "user": "user", GPT: "assistant", "assistant": "assistant", SYSTEM: "system"}
# VQA answer types (``answer_type`` of a record); anything else is a caption row
ANSWER_TYPES = ("CLOSED", "OPEN")


def normalize_answer_type(value: Any) -> Optional[str]:
    """``" closed "`` -> ``"CLOSED"``; None for anything that is not a VQA answer type."""
    text = str(value if value is not None else "").strip().upper()
    return text if text in ANSWER_TYPES else None


@dataclass(frozen=True)
class Problem:
    """One rule a record breaks.

    Attributes:
        field (str): the offending field (``conversations[1].from``, ``image``, ``<record>`` ...).
        message (str): what is wrong.
        fatal (bool): the record cannot be read at all (its other checks are meaningless).
    """

    field: str
    message: str
    fatal: bool = True


@dataclass
class Record:
    """A record read by the rules.

    Attributes:
        turns (List[Tuple[str, str]]): ``(role, text)`` with roles system/user/assistant.
        image (Optional[str]): the image path as written, None for a text-only record.
        image_path (Optional[str]): the resolved image path (None without an image, or when the
            path escapes its root: a fatal problem).
        record (Dict[str, Any]): the raw JSON object (extra fields kept for evaluation).
    """

    turns: List[Tuple[str, str]]
    image: Optional[str]
    image_path: Optional[str]
    record: Dict[str, Any] = field(repr=False)

    @property
    def question(self) -> str:
        """The first user turn."""
        return next(text for role, text in self.turns if role == "user")

    @property
    def answer(self) -> str:
        """The first assistant turn (the reference answer of a VQA record)."""
        return next(text for role, text in self.turns if role == "assistant")


def image_root(record: Dict[str, Any], image_dir: Optional[str] = None, file_dir: Optional[str] = None) -> Optional[str]:
    """The image root of a record: ``image_dir`` (an override), ``meta`` ``dir=``, the file's folder."""
    if image_dir is not None:
        return str(image_dir)
    meta = record.get("meta")
    if isinstance(meta, str) and meta.startswith("dir="):
        return meta[len("dir="):]
    return None if file_dir is None else str(file_dir)


def resolve_image_path(root: str, image: str) -> Optional[str]:
    """``root/image`` with the root's symlinks resolved, or None when the path leaves the root.

    The check is lexical: ``..`` and absolute paths may not leave the root, while symlinks inside
    it may point anywhere.
    """
    real_root = os.path.realpath(os.path.expanduser(root))
    path = os.path.normpath(os.path.join(real_root, image))
    return path if os.path.commonpath([real_root, path]) == real_root else None


def check_record(
    record: Any, image_dir: Optional[str] = None, file_dir: Optional[str] = None
) -> Tuple[Optional[Record], List[Problem]]:
    """Read one record by the rules.

    Args:
        record (Any): the JSON value.
        image_dir (Optional[str]): image root overriding ``meta``.
        file_dir (Optional[str]): folder of the JSON file (the last fallback root; ``.`` if None).

    Returns:
        Tuple[Optional[Record], List[Problem]]: the read record (None when a fatal problem makes it
        unreadable) and every problem, in the order of the fields (empty when the record is valid).
    """
    if not isinstance(record, dict):
        return None, [Problem("<record>", f"expected an object, got {type(record).__name__}")]
    problems: List[Problem] = []
    turns = _read_turns(record.get("conversations"), problems)
    image, image_path = _read_image(record, image_dir, file_dir, problems)
    if turns is not None:
        markers = sum(text.count(IMAGE_MARKER) for role, text in turns if role == "user")
        if markers > (1 if image else 0):
            problems.append(Problem("conversations", f"{markers} '{IMAGE_MARKER}' markers but {int(bool(image))} image"))
    if turns is None or any(problem.fatal for problem in problems):
        return None, problems
    return Record(turns=turns, image=image, image_path=image_path, record=record), problems


def _read_turns(conversations: Any, problems: List[Problem]) -> Optional[List[Tuple[str, str]]]:
    if not isinstance(conversations, list) or not conversations:
        problems.append(Problem("conversations", "missing or not a non-empty list"))
        return None
    turns: List[Tuple[str, str]] = []
    readable = True
    for turn_index, turn in enumerate(conversations):
        where = f"conversations[{turn_index}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            problems.append(Problem(where, "expected {'from': ..., 'value': <string>}"))
            readable = False
            continue
        role = ROLES.get(turn.get("from")) if isinstance(turn.get("from"), str) else None
        if role is None:
            problems.append(Problem(f"{where}.from", f"unknown speaker {turn.get('from')!r} (use human/gpt)"))
            readable = False
            continue
        if role == "system" and turn_index != 0:
            problems.append(Problem(f"{where}.from", "a system turn may only come first"))
            readable = False
            continue
        turns.append((role, turn["value"]))
    if not readable:
        return None
    offset = 1 if turns[0][0] == "system" else 0
    for position, (role, text) in enumerate(turns[offset:]):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            problems.append(Problem(
                f"conversations[{position + offset}].from",
                f"turns must alternate human/gpt starting with human; expected {expected}, got {role}",
            ))
            return None
    for position, (role, text) in enumerate(turns[offset:]):
        if not text.strip():
            what = "empty answer" if role == "assistant" else "empty question"
            problems.append(Problem(f"conversations[{position + offset}].value", what, fatal=False))
    if len(turns) == offset or turns[-1][0] != "assistant":
        problems.append(Problem("conversations", "must end with a gpt answer"))
        return None
    return turns


def _read_image(
    record: Dict[str, Any], image_dir: Optional[str], file_dir: Optional[str], problems: List[Problem]
) -> Tuple[Optional[str], Optional[str]]:
    meta = record.get("meta")
    if meta is not None and not (isinstance(meta, str) and meta.startswith("dir=")):
        problems.append(Problem("meta", f"expected 'dir=/image/root', got {meta!r}", fatal=False))
    image = record.get("image")
    if image is None or image == "":
        return None, None
    if not isinstance(image, str):
        problems.append(Problem("image", f"expected a relative path string, got {type(image).__name__}"))
        return None, None
    root = image_root(record, image_dir, file_dir if file_dir is not None else ".")
    path = resolve_image_path(root, image)
    if path is None:
        real_root = os.path.realpath(os.path.expanduser(root))
        problems.append(Problem("image", f"path {image!r} escapes the image directory {real_root}"))
    return image, path


def first_question(record: Dict[str, Any]) -> Optional[str]:
    """The first human turn of a raw record (any accepted speaker name), or None."""
    return _first_text(record, "user")


def first_answer(record: Dict[str, Any]) -> Optional[str]:
    """The first gpt turn of a raw record (``gpt`` or ``assistant``), or None."""
    return _first_text(record, "assistant")


def _first_text(record: Dict[str, Any], role: str) -> Optional[str]:
    conversations = record.get("conversations") if isinstance(record, dict) else None
    for turn in conversations if isinstance(conversations, list) else []:
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if isinstance(speaker, str) and ROLES.get(speaker) == role and isinstance(turn.get("value"), str):
            return turn["value"]
    return None
