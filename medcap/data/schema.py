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
  folder of the JSON file; the image path may not leave its root, neither lexically (``..`` or
  absolute paths) nor through a symlink whose target lies outside the root (the one exception: a
  Hugging Face cache snapshot ``.../datasets--org--name/snapshots/<rev>/`` may link into its own
  ``.../datasets--org--name/blobs/``); the root itself may be a symlink;
* at most one ``<image>`` marker in the human turns, and only in a record with an image.

A file is read by :func:`read_record_list` (a JSON list, UTF-8 with or without a byte-order
mark; a JSON Lines file is refused naming the converter). The training dataset, the validator,
the converters, generation and the synthetic data all call :func:`check_record`, so "the validator reports no problem" and "the training dataset accepts the
record" are the same statement (a property test holds them to it).
"""

import json
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

    This check is lexical (``..`` and absolute paths may not leave the root); symlinks inside the
    root are checked by :func:`symlink_escape`.
    """
    real_root = os.path.realpath(os.path.expanduser(root))
    path = os.path.normpath(os.path.join(real_root, image))
    return path if _inside(path, real_root) else None


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([folder, path]) == folder


def _hugging_face_blobs(real_root: str) -> Optional[str]:
    """``.../datasets--org--name/blobs`` when the root lies in that repository's ``snapshots/``."""
    parts = real_root.split(os.sep)
    for index in range(len(parts) - 1, 0, -1):
        if parts[index] == "snapshots" and parts[index - 1].split("--")[0] in ("datasets", "models", "spaces"):
            return os.sep.join(parts[:index] + ["blobs"])
    return None


def symlink_escape(real_root: str, path: str) -> Optional[str]:
    """The target of ``path`` when a symlink on the way leads outside ``real_root``, else None.

    A missing file is not an escape (it is reported as missing). Targets in the Hugging Face
    cache's own ``blobs`` folder are allowed for a root inside its ``snapshots``.
    """
    target = os.path.realpath(path)
    if target == path or _inside(target, real_root):
        return None
    blobs = _hugging_face_blobs(real_root)
    if blobs is not None and _inside(target, blobs):
        return None
    return target


class DatasetFileError(ValueError):
    """A dataset file that is not a JSON list of records (the message names the file and the format).

    Attributes:
        path (str): the file.
        reason (str): what is wrong.
    """

    def __init__(self, path: Any, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def convert_command(path: Any, dataset: str = "plm") -> str:
    """The converter command line that turns ``path`` into a ShareGPT JSON list."""
    stem = os.path.splitext(str(path))[0]
    return f"python tools/convert_to_sharegpt.py --dataset {dataset} --input {path} --output {stem}_sharegpt.json"


def is_json_lines(text: str) -> bool:
    """Whether ``text`` holds one JSON object per line (at least one line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return bool(lines) and all(isinstance(json.loads(line), dict) for line in lines)
    except json.JSONDecodeError:
        return False


def read_record_list(path: Any) -> List[Any]:
    """Read a medcap ShareGPT file: a JSON list, UTF-8 with or without a byte-order mark.

    Args:
        path (Any): the file.

    Returns:
        List[Any]: its records (not yet checked).

    Raises:
        FileNotFoundError: no such file.
        DatasetFileError: not UTF-8, not JSON, a JSON Lines file (one record a line, e.g. the
            Perception-LM format; the message gives the converter command), or not a list.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetFileError(path, f"not UTF-8 text ({error}); medcap reads UTF-8 JSON") from None
    jsonl_hint = (f"this is JSON Lines (one record a line, e.g. the Perception-LM format); medcap trains on a JSON "
                  f"list: convert it with `{convert_command(path)}`")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and is_json_lines(text):
            raise DatasetFileError(path, jsonl_hint) from None
        raise DatasetFileError(path, f"not valid JSON ({error})") from None
    if not isinstance(records, list):
        hint = f"; {jsonl_hint}" if isinstance(records, dict) and str(path).endswith(".jsonl") else ""
        raise DatasetFileError(path, f"expected a JSON list of records, got {type(records).__name__}{hint}")
    return records


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
    real_root = os.path.realpath(os.path.expanduser(root))
    if path is None:
        problems.append(Problem("image", f"path {image!r} escapes the image directory {real_root}"))
    elif (target := symlink_escape(real_root, path)) is not None:
        problems.append(Problem("image", f"path {image!r} is a symlink to {target}, outside the image directory "
                                         f"{real_root} (copy the file into it, or point the image root at its folder)"))
        path = None
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
