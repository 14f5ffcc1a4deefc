"""medcap's ShareGPT JSON: parsing, validation and the training dataset.

A file holds a JSON list of records::

    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}, ...],
     "image": "rel/path.jpg",            # optional: text-only records are allowed
     "meta": "dir=/images/root",         # optional image root
     ...}                                # extra fields (answer_type, ...) are kept for evaluation

Turns alternate human/gpt, starting with human (an optional leading ``system`` turn is allowed).
A human value may contain ``<image>`` to place the image; without it the image opens the first
human turn. The image root is, in order: the ``image_dir`` argument, the record's ``meta`` ``dir=``,
the JSON file's folder. Image paths may not leave their root.
"""

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from torch.utils.data import Dataset
from torchtune.data import Message
from tqdm import tqdm

from medcap.data.converters.common import image_root, resolve_image_path
from medcap.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageLoadError, load_image
from medcap.data.transform import MedcapTransform

log = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A bad record. The message names the file, the record index and the field."""

    def __init__(self, source: Any, index: Optional[int], field: str, reason: str):
        self.source, self.index, self.field, self.reason = source, index, field, reason
        where = f"{source}" if index is None else f"{source}: record {index}"
        super().__init__(f"{where}: field '{field}': {reason}")


@dataclass
class ParsedRecord:
    """A validated record: its conversation turns and resolved image path."""

    turns: List[Tuple[str, str]]  # (role, text), roles system/user/assistant
    image_path: Optional[Path]
    record: Dict[str, Any]


def load_records(source: Path) -> List[Any]:
    """Read a ShareGPT JSON file; it must hold a list."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"dataset file not found: {source}")
    try:
        with open(source, encoding="utf-8") as f:
            records = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RecordError(source, None, "<file>", f"not valid JSON ({error})") from error
    if not isinstance(records, list):
        raise RecordError(source, None, "<file>", f"expected a JSON list of records, got {type(records).__name__}")
    return records


def parse_record(record: Any, source: Any, index: int, image_dir: Optional[Path] = None) -> ParsedRecord:
    """Validate one record and resolve its image path.

    Args:
        record (Any): the JSON value.
        source (Any): the file it came from (for messages).
        index (int): its index in the file.
        image_dir (Optional[Path]): image root overriding ``meta``.

    Returns:
        ParsedRecord: turns and image path.

    Raises:
        RecordError: naming the file, record and field.
    """
    if not isinstance(record, dict):
        raise RecordError(source, index, "<record>", f"expected an object, got {type(record).__name__}")
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise RecordError(source, index, "conversations", "missing or not a non-empty list")
    turns: List[Tuple[str, str]] = []
    for turn_index, turn in enumerate(conversations):
        field = f"conversations[{turn_index}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError(source, index, field, "expected {'from': ..., 'value': <string>}")
        role = _ROLES.get(turn.get("from"))
        if role is None:
            raise RecordError(source, index, f"{field}.from", f"unknown speaker {turn.get('from')!r} (use human/gpt)")
        if role == "system" and turn_index != 0:
            raise RecordError(source, index, f"{field}.from", "a system turn may only come first")
        turns.append((role, turn["value"]))
    dialogue = turns[1:] if turns[0][0] == "system" else turns
    for position, (role, text) in enumerate(dialogue):
        expected = "user" if position % 2 == 0 else "assistant"
        turn_index = position + len(turns) - len(dialogue)
        if role != expected:
            raise RecordError(
                source, index, f"conversations[{turn_index}].from",
                f"turns must alternate human/gpt starting with human; expected {expected}, got {role}",
            )
        if not text.strip():
            what = "empty answer" if role == "assistant" else "empty question"
            raise RecordError(source, index, f"conversations[{turn_index}].value", what)
    if not dialogue or dialogue[-1][0] != "assistant":
        raise RecordError(source, index, "conversations", "must end with a gpt answer")
    image_path = _resolve_image(record, source, index, image_dir)
    markers = sum(text.count(IMAGE_MARKER) for role, text in turns if role == "user")
    if markers > (1 if image_path else 0):
        raise RecordError(source, index, "conversations", f"{markers} '{IMAGE_MARKER}' markers but {int(bool(image_path))} image")
    return ParsedRecord(turns=turns, image_path=image_path, record=record)


def _resolve_image(record: Dict[str, Any], source: Any, index: int, image_dir: Optional[Path]) -> Optional[Path]:
    image = record.get("image")
    if image is None or image == "":
        return None
    if not isinstance(image, str):
        raise RecordError(source, index, "image", f"expected a relative path string, got {type(image).__name__}")
    meta = record.get("meta")
    if image_dir is None and meta is not None and not (isinstance(meta, str) and meta.startswith("dir=")):
        raise RecordError(source, index, "meta", f"expected 'dir=/image/root', got {meta!r}")
    file_dir = Path(source).parent if isinstance(source, (str, Path)) else Path(".")
    root = image_root(record, None if image_dir is None else str(image_dir), str(file_dir))
    path = resolve_image_path(root, image)
    if path is None:
        raise RecordError(
            source, index, "image", f"path {image!r} escapes the image directory {Path(root).expanduser().resolve()}"
        )
    return Path(path)


def to_messages(turns: List[Tuple[str, str]], has_image: bool, *, train_on_input: bool = False) -> List[Message]:
    """Build torchtune messages; the image goes at ``<image>`` or opens the first user turn."""
    marker_in_text = any(IMAGE_MARKER in text for role, text in turns if role == "user")
    messages, image_placed = [], False
    for role, text in turns:
        content: List[Dict[str, Any]] = []
        if role == "user" and has_image and not image_placed and (IMAGE_MARKER in text or not marker_in_text):
            before, _, after = text.partition(IMAGE_MARKER) if IMAGE_MARKER in text else ("", "", text)
            content += [{"type": "text", "content": before}] if before.strip() else []
            content.append({"type": "image"})
            text, image_placed = after, True
        if text.strip() or not content:
            content.append({"type": "text", "content": text})
        masked = role != "assistant" and not train_on_input
        messages.append(Message(role=role, content=content, masked=masked))
    return messages


class ShareGPTImageDataset(Dataset):
    """A medcap ShareGPT JSON file as a map-style dataset of tokenized samples with images.

    Every record is validated, tokenized and (``image_check="decode"``) has its image decoded once
    when the dataset is built, so a bad record fails before training, not hours into it.

    Args:
        source (str): path to the JSON file.
        model_transform (MedcapTransform): tokenizer + image transform.
        image_dir (Optional[str]): image root overriding each record's ``meta``.
        skip_bad_records (bool): skip invalid records (logged with counts per reason) instead of raising.
        image_check (str): ``"decode"`` (decode every image now), ``"exists"`` or ``"none"``.
        max_image_pixels (int): refuse larger images (decompression-bomb guard).
        train_on_input (bool): also train on user turns.
    """

    def __init__(
        self,
        source: str,
        model_transform: MedcapTransform,
        image_dir: Optional[str] = None,
        skip_bad_records: bool = False,
        image_check: str = "decode",
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        train_on_input: bool = False,
    ):
        if image_check not in ("decode", "exists", "none"):
            raise ValueError(f"image_check must be 'decode', 'exists' or 'none', got {image_check!r}")
        self.source = Path(source)
        self.model_transform = model_transform
        self.max_image_pixels = max_image_pixels
        self.skipped: List[RecordError] = []
        root = Path(image_dir) if image_dir else None
        self._samples: List[Tuple[List[int], List[int], Optional[Path], int]] = []  # + index in the file
        self.records: List[Dict[str, Any]] = []
        records = load_records(self.source)
        for index, record in enumerate(tqdm(records, desc=f"checking {self.source.name}", leave=False, disable=len(records) < 2000)):
            try:
                self._add(record, index, root, image_check, train_on_input)
            except RecordError as error:
                if not skip_bad_records:
                    raise
                self.skipped.append(error)
        if self.skipped:
            reasons = Counter(f"{e.field.split('[')[0]}: {e.reason.split(':')[0]}" for e in self.skipped)
            log.warning(
                "%s: skipped %d of %d records: %s", self.source, len(self.skipped), len(records),
                "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common()),
            )
        if not self._samples:
            raise RecordError(self.source, None, "<file>", f"no usable records ({len(records)} in file, {len(self.skipped)} skipped)")

    def _add(self, record: Any, index: int, root: Optional[Path], image_check: str, train_on_input: bool) -> None:
        parsed = parse_record(record, self.source, index, root)
        if parsed.image_path is not None and image_check != "none":
            if image_check == "exists" and not parsed.image_path.is_file():
                raise RecordError(self.source, index, "image", f"image not found: {parsed.image_path}")
            if image_check == "decode":
                try:
                    load_image(parsed.image_path, self.max_image_pixels)
                except ImageLoadError as error:
                    raise RecordError(self.source, index, "image", str(error)) from error
        messages = to_messages(parsed.turns, parsed.image_path is not None, train_on_input=train_on_input)
        try:
            tokens, labels = self.model_transform.tokenize(messages)
        except ValueError as error:
            raise RecordError(self.source, index, "conversations", str(error)) from error
        self._samples.append((tokens, labels, parsed.image_path, index))
        self.records.append(parsed.record)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def lengths(self) -> List[int]:
        """Token count of every sample (for length-grouped batching)."""
        return [len(tokens) for tokens, _, _, _ in self._samples]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        tokens, labels, image_path, record_index = self._samples[index]
        image = None
        if image_path is not None:
            try:
                pil_image = load_image(image_path, self.max_image_pixels)
            except ImageLoadError as error:
                raise RecordError(self.source, record_index, "image", str(error)) from error
            transform = self.model_transform.image_transform
            image = transform(pil_image) if transform is not None else pil_image
        return {"tokens": list(tokens), "labels": list(labels), "image": image}


def sharegpt_image_dataset(
    model_transform: MedcapTransform,
    source: str,
    image_dir: Optional[str] = None,
    skip_bad_records: bool = False,
    image_check: str = "decode",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    train_on_input: bool = False,
) -> ShareGPTImageDataset:
    """Dataset builder for configs (``_component_: medcap.data.sharegpt_image_dataset``).

    See :class:`ShareGPTImageDataset` for the arguments.
    """
    return ShareGPTImageDataset(
        source, model_transform, image_dir=image_dir, skip_bad_records=skip_bad_records,
        image_check=image_check, max_image_pixels=max_image_pixels, train_on_input=train_on_input,
    )
