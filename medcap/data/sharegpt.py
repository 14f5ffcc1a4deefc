"""medcap's ShareGPT JSON: parsing, validation and the training dataset.

A file holds a JSON list of records::

    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}, ...],
     "image": "rel/path.jpg",            # optional: text-only records are allowed
     "meta": "dir=/images/root",         # optional image root
     ...}                                # extra fields (answer_type, ...) are kept for evaluation

The record rules (speakers, alternation, image slot, image root, empty turns) live in
:mod:`medcap.data.schema`, shared with the validator, the converters and generation. A human value
may contain ``<image>`` to place the image; without it the image opens the first human turn.
"""

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch.utils.data import Dataset
from torchtune.data import Message
from tqdm import tqdm

from medcap.data.schema import DatasetFileError, IMAGE_MARKER, check_record, read_record_list
from medcap.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageLoadError, load_image
from medcap.data.transform import MedcapTransform

log = logging.getLogger(__name__)
IMAGE_CHECKS = ("decode", "exists", "none")


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
    """Read a ShareGPT JSON file (:func:`medcap.data.schema.read_record_list`); it must hold a list.

    Raises:
        FileNotFoundError: no such file.
        RecordError: field ``<file>``: not UTF-8 JSON, JSON Lines (the message names the converter),
            or not a list.
    """
    source = Path(source)
    try:
        return read_record_list(source)
    except DatasetFileError as error:
        raise RecordError(source, None, "<file>", error.reason) from None


def parse_record(record: Any, source: Any, index: int, image_dir: Optional[Path] = None) -> ParsedRecord:
    """Read one record by the rules of :mod:`medcap.data.schema`; raise at its first problem.

    Args:
        record (Any): the JSON value.
        source (Any): the file it came from (for messages; its folder is the last image root).
        index (int): its index in the file.
        image_dir (Optional[Path]): image root overriding ``meta``.

    Returns:
        ParsedRecord: turns and image path.

    Raises:
        RecordError: naming the file, record and field.
    """
    file_dir = str(Path(source).parent) if isinstance(source, (str, Path)) else None
    parsed, problems = check_record(record, None if image_dir is None else str(image_dir), file_dir)
    if problems:
        raise RecordError(source, index, problems[0].field, problems[0].message)
    return ParsedRecord(
        turns=parsed.turns, image_path=Path(parsed.image_path) if parsed.image_path else None, record=parsed.record
    )


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


def _collect_records(
    source: Path,
    image_dir: Optional[str],
    image_check: str,
    max_image_pixels: int,
    skip_bad_records: bool,
    accept: Callable[[int, ParsedRecord], None],
    max_records: Optional[int] = None,
) -> List[RecordError]:
    """Read, check and hand over every record of a file: the one data path of training and evaluation.

    Each record is parsed by the schema, its image checked (``image_check``: ``decode`` decodes
    each distinct image once, ``exists``, ``none``), then given to ``accept`` (which may raise
    :class:`RecordError` too, e.g. when tokenizing). Bad records raise, or with
    ``skip_bad_records`` are skipped and counted per reason in one warning.

    Returns:
        List[RecordError]: the skipped records' errors.

    Raises:
        RecordError: the first bad record (without ``skip_bad_records``), or a file without any
            usable record.
    """
    if image_check not in IMAGE_CHECKS:
        raise ValueError(f"image_check must be one of {', '.join(map(repr, IMAGE_CHECKS))}, got {image_check!r}")
    root = Path(image_dir) if image_dir else None
    records = load_records(source)
    if max_records is not None:
        records = records[:max_records]
    checked: Dict[Path, Optional[str]] = {}  # image -> error, each distinct image checked once
    skipped: List[RecordError] = []
    accepted = 0
    for index, record in enumerate(tqdm(records, desc=f"checking {source.name}", leave=False, disable=len(records) < 2000)):
        try:
            parsed = parse_record(record, source, index, root)
            if parsed.image_path is not None and image_check != "none":
                if parsed.image_path not in checked:
                    checked[parsed.image_path] = _image_problem(parsed.image_path, image_check, max_image_pixels)
                if checked[parsed.image_path] is not None:
                    raise RecordError(source, index, "image", checked[parsed.image_path])
            accept(index, parsed)
            accepted += 1
        except RecordError as error:
            if not skip_bad_records:
                raise
            skipped.append(error)
    if skipped:
        reasons = Counter(f"{e.field.split('[')[0]}: {e.reason.split(':')[0]}" for e in skipped)
        log.warning(
            "%s: skipped %d of %d records: %s", source, len(skipped), len(records),
            "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common()),
        )
    if not accepted:
        raise RecordError(source, None, "<file>", f"no usable records ({len(records)} in file, {len(skipped)} skipped)")
    return skipped


def _image_problem(path: Path, image_check: str, max_image_pixels: int) -> Optional[str]:
    if image_check == "exists":
        return None if path.is_file() else f"image not found: {path}"
    try:
        load_image(path, max_image_pixels)
    except ImageLoadError as error:
        return str(error)
    return None


def _load_sample_image(source: Path, record_index: int, image_path: Path, max_image_pixels: int):
    try:
        return load_image(image_path, max_image_pixels)
    except ImageLoadError as error:
        raise RecordError(source, record_index, "image", str(error)) from error


def _shown(indices: List[int], limit: int = 10) -> str:
    return ", ".join(map(str, indices[:limit])) + (f" ... ({len(indices) - limit} more)" if len(indices) > limit else "")


class ShareGPTImageDataset(Dataset):
    """A medcap ShareGPT JSON file as a map-style dataset of tokenized samples with images.

    Every record is validated, tokenized and (``image_check="decode"``) has its image decoded once
    when the dataset is built, so a bad record fails before training, not hours into it. Records
    longer than ``max_seq_len`` are truncated after their first answer (refused when that would cut
    the image or the first answer) and repeated records are kept: both are counted in one warning
    each (``truncated``, ``duplicates``).

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
        self.source = Path(source)
        self.model_transform = model_transform
        self.max_image_pixels = max_image_pixels
        self._samples: List[Tuple[List[int], List[int], Optional[Path], int]] = []  # + index in the file
        self.records: List[Dict[str, Any]] = []

        self.truncated: List[int] = []  # records longer than max_seq_len, cut after their first answer
        self.duplicates: List[int] = []  # records equal to an earlier one (same turns, same image)
        first_of: Dict[str, int] = {}
        measure = getattr(self.model_transform, "tokenize_with_length", None)

        def accept(index: int, parsed: ParsedRecord) -> None:
            messages = to_messages(parsed.turns, parsed.image_path is not None, train_on_input=train_on_input)
            try:
                if measure is not None:
                    tokens, labels, full_length = measure(messages)
                else:
                    (tokens, labels), full_length = self.model_transform.tokenize(messages), 0
            except ValueError as error:
                raise RecordError(self.source, index, "conversations", str(error)) from error
            if full_length > len(tokens):
                self.truncated.append(index)
            key = json.dumps([parsed.turns, str(parsed.image_path)], ensure_ascii=False)
            if first_of.setdefault(key, index) != index:
                self.duplicates.append(index)
            self._samples.append((tokens, labels, parsed.image_path, index))
            self.records.append(parsed.record)

        self.skipped = _collect_records(self.source, image_dir, image_check, max_image_pixels, skip_bad_records, accept)
        if self.truncated:
            log.warning(
                "%s: %d of %d records are longer than max_seq_len=%d and are truncated after their first answer "
                "(later turns not trained): records %s", self.source, len(self.truncated), len(self._samples),
                getattr(self.model_transform, "max_seq_len", -1), _shown(self.truncated),
            )
        if self.duplicates:
            log.warning(
                "%s: %d records repeat an earlier record (same turns and image) and are trained on again: records %s "
                "(tools/validate_dataset.py lists them; remove them if the repetition is not intended)",
                self.source, len(self.duplicates), _shown(self.duplicates),
            )

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
            pil_image = _load_sample_image(self.source, record_index, image_path, self.max_image_pixels)
            transform = self.model_transform.image_transform
            image = transform(pil_image) if transform is not None else pil_image
        return {"tokens": list(tokens), "labels": list(labels), "image": image}


# fields of a record that are not carried to the predictions table as metadata
_NOT_METADATA = ("conversations", "image", "meta")


class ShareGPTEvalDataset:
    """A medcap ShareGPT JSON file as evaluation samples: question, reference, image and metadata.

    The same data path as :class:`ShareGPTImageDataset` (schema rules, image roots, ``image_check``,
    skip-and-count of bad records); only the output differs: one row per record for generation,
    with every scalar field of the record (``answer_type``, ``question_type``, ``content_type``,
    ``modality`` ...) carried as metadata to the predictions table.

    Args:
        source (str): path to the JSON file.
        image_dir (Optional[str]): image root overriding each record's ``meta``.
        skip_bad_records (bool): skip invalid records (counted) instead of raising.
        image_check (str): ``"decode"``, ``"exists"`` or ``"none"``.
        max_image_pixels (int): refuse larger images.
        max_samples (Optional[int]): read only the first records of the file.

    Attributes:
        samples (List[Dict[str, Any]]): ``id``, ``image`` (path or ""), ``question``, ``reference``,
            ``answer_type``, ``question_type`` and the record's other scalar fields.
        skipped (List[RecordError]): the skipped records.
    """

    def __init__(
        self,
        source: str,
        image_dir: Optional[str] = None,
        skip_bad_records: bool = False,
        image_check: str = "decode",
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_samples: Optional[int] = None,
    ):
        self.source = Path(source)
        self.max_image_pixels = max_image_pixels
        self.samples: List[Dict[str, Any]] = []
        self._record_index: List[int] = []

        def accept(index: int, parsed: ParsedRecord) -> None:
            metadata = {
                key: value for key, value in parsed.record.items()
                if key not in _NOT_METADATA and (value is None or isinstance(value, (str, int, float, bool)))
            }
            sample = {
                "id": parsed.record.get("id", index),
                "image": str(parsed.image_path or ""),
                "question": next(text for role, text in parsed.turns if role == "user"),
                "reference": next(text for role, text in parsed.turns if role == "assistant"),
                "answer_type": str(parsed.record.get("answer_type", "") or "").strip(),
                "question_type": str(parsed.record.get("question_type", "") or ""),
            }
            self.samples.append({**sample, **{k: v for k, v in metadata.items() if k not in sample}})
            self._record_index.append(index)

        self.skipped = _collect_records(
            self.source, image_dir, image_check, max_image_pixels, skip_bad_records, accept, max_records=max_samples
        )

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int):
        """The decoded image (PIL, RGB) of sample ``index``; a bad file raises :class:`RecordError`."""
        return _load_sample_image(self.source, self._record_index[index], Path(self.samples[index]["image"]), self.max_image_pixels)


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


def sharegpt_eval_dataset(
    source: str,
    image_dir: Optional[str] = None,
    skip_bad_records: bool = False,
    image_check: str = "decode",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_samples: Optional[int] = None,
) -> ShareGPTEvalDataset:
    """Evaluation dataset builder for configs (``_component_: medcap.data.sharegpt_eval_dataset``).

    See :class:`ShareGPTEvalDataset` for the arguments.
    """
    return ShareGPTEvalDataset(
        source, image_dir=image_dir, skip_bad_records=skip_bad_records, image_check=image_check,
        max_image_pixels=max_image_pixels, max_samples=max_samples,
    )
