"""Checks of ShareGPT dataset files before training or evaluation.

The validator refuses what training refuses. Errors (the data cannot be used as is): a file that
is not a JSON list (JSON Lines is named, with the converter to use) or holds no record, schema
violations (symlinks out of the image root included), missing, undecodable or too large images
(``max_image_pixels``), empty answers, and records whose first question and answer exceed
``max_seq_len`` (training refuses them: it never cuts the image or the first answer). Warnings:
records longer than ``max_seq_len`` only in later turns (training truncates them), duplicates
(training keeps them and warns), multi-frame images (training uses the first frame), images
smaller than ``SMALL_IMAGE_SIDE`` on a side (upscaled), and leakage between splits by image
identity (sha1 of the image file's bytes), such as SLAKE's cross-language image overlap or
VQA-RAD's question-level split.
"""

import hashlib
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from medcap.data.converters.common import SPLITS
from medcap.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageLoadError, read_image
from medcap.data.schema import DatasetFileError, check_record, first_question, read_record_list

# images smaller than this on a side get a warning (the transform upscales them)
SMALL_IMAGE_SIDE = 16

WORD_COUNT_NOTE = (
    "lengths are whitespace-separated words, an approximation: subword tokenizers usually give "
    "more tokens than words; pass --tokenizer path/to/tokenizer.json for exact counts"
)


@dataclass
class Issue:
    """One finding. ``record`` is the 0-based index in ``file``; ``None`` for file-level findings."""

    severity: str  # "error" or "warning"
    file: str
    record: Optional[int]
    field: Optional[str]
    message: str

    def __str__(self) -> str:
        where = [f"file '{self.file}'"]
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{self.severity.upper()} {', '.join(where)}: {self.message}"


@dataclass
class ValidationReport:
    """Result of :func:`validate_files`.

    Attributes:
        summary (pd.DataFrame): one row per partition (a file, or a split inside a file).
        leakage (pd.DataFrame): one row per pair of partitions sharing images.
        issues (List[Issue]): every error and warning.
        length_unit (str): ``tokens`` or ``words``.
        notes (List[str]): remarks such as the word-count approximation.
    """

    summary: pd.DataFrame
    leakage: pd.DataFrame
    issues: List[Issue] = field(default_factory=list)
    length_unit: str = "tokens"
    notes: List[str] = field(default_factory=list)

    @property
    def errors(self) -> List[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> List[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    def passed(self, strict: bool = False) -> bool:
        """No errors (and, when ``strict``, no warnings)."""
        return not self.errors and not (strict and self.warnings)

    def to_dict(self) -> dict:
        """A JSON-serialisable form of the report."""
        return {
            "passed": self.passed(),
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "length_unit": self.length_unit,
            "notes": self.notes,
            "summary": json.loads(self.summary.to_json(orient="records")),
            "leakage": json.loads(self.leakage.to_json(orient="records")),
            "issues": [asdict(issue) for issue in self.issues],
        }


@dataclass
class _ImageCheck:
    sha1: Optional[str] = None
    error: Optional[str] = None  # "missing" or a decode error
    notes: List[str] = field(default_factory=list)  # warnings: multi-frame, tiny


def _check_image(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> _ImageCheck:
    """Reads an image file once: sha1 of its bytes, then a full decode as training does it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return _ImageCheck(error="missing")
    except OSError as err:
        return _ImageCheck(error=f"unreadable ({err})")
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        image, frames = read_image(path, max_pixels)
    except ImageLoadError as err:
        return _ImageCheck(sha1=sha1, error=f"does not load ({err})")
    notes = []
    if frames > 1:
        notes.append(f"has {frames} frames; training uses the first")
    if min(image.size) < SMALL_IMAGE_SIDE:
        notes.append(f"is {image.size[0]}x{image.size[1]} pixels; training upscales it to the model's image size")
    return _ImageCheck(sha1=sha1, notes=notes)


def check_images(
    paths: Sequence[str], num_workers: int = 8, progress: bool = True, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Dict[str, _ImageCheck]:
    """Hashes and decodes each distinct image path in a thread pool.

    Args:
        paths (Sequence[str]): image files (duplicates are checked once).
        num_workers (int): threads; PIL and file reads release the GIL.
        progress (bool): show a tqdm bar.
        max_pixels (int): larger images are errors (training's ``max_image_pixels``).

    Returns:
        Dict[str, _ImageCheck]: path -> sha1, error and notes.
    """
    unique_paths = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = pool.map(lambda path: _check_image(path, max_pixels), unique_paths)
        checks = list(tqdm(results, total=len(unique_paths), desc="images", disable=not progress))
    return dict(zip(unique_paths, checks))


def _first_question(record: dict) -> str:
    return first_question(record).strip()


def _record_text(record: dict) -> str:
    return "\n".join(turn["value"] for turn in record["conversations"])


def _first_exchange_text(record: dict) -> str:
    """The turns up to the first answer (a system turn, the first question, the first answer)."""
    turns = record["conversations"]
    end = next(index for index, turn in enumerate(turns) if turn["from"] in ("gpt", "assistant"))
    return "\n".join(turn["value"] for turn in turns[: end + 1])


def _lengths(texts: List[str], tokenizer_path: Optional[str]) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=np.int64)
    if tokenizer_path is None:
        return np.array([len(text.split()) for text in texts])
    from tokenizers import Tokenizer

    if not os.path.isfile(tokenizer_path):
        raise FileNotFoundError(f"tokenizer file '{tokenizer_path}' does not exist")
    tokenizer = Tokenizer.from_file(tokenizer_path)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return np.array([len(encoding.ids) for encoding in encodings])


@dataclass
class _Entry:
    """A schema-valid record with what the checks need."""

    file: str
    index: int
    partition: str
    record: dict
    image_path: Optional[str]
    empty_answers: int = 0


def _load(paths: Sequence[str], image_dir: Optional[str], issues: List[Issue]):
    entries, partitions, invalid = [], [], {}
    basenames = [os.path.basename(path) for path in paths]
    for path in paths:
        name = os.path.basename(path) if basenames.count(os.path.basename(path)) == 1 else path
        try:
            records = read_record_list(path)
        except FileNotFoundError:
            issues.append(Issue("error", path, None, None, "does not exist"))
            partitions.append(name)
            continue
        except DatasetFileError as err:
            issues.append(Issue("error", path, None, None, err.reason))
            partitions.append(name)
            continue
        if not records:
            issues.append(Issue("error", path, None, None, "holds no records (an empty list); training refuses it"))
        splits = {record.get("split") for record in records if isinstance(record, dict)}
        splits = {split for split in splits if isinstance(split, str)}
        by_split = len(splits) > 1
        split_order = {split: position for position, split in enumerate(SPLITS)}
        ordered_splits = sorted(splits, key=lambda split: (split_order.get(split, len(SPLITS)), split))
        partitions += [f"{name}:{split}" for split in ordered_splits] if by_split else [name]
        file_dir = os.path.dirname(os.path.abspath(path))
        for index, record in enumerate(records):
            split = record.get("split") if isinstance(record, dict) else None
            partition = f"{name}:{split}" if by_split and isinstance(split, str) else name
            if partition not in partitions:
                partitions.append(partition)
            parsed, problems = check_record(record, image_dir, file_dir)
            issues += [Issue("error", path, index, problem.field, problem.message) for problem in problems]
            if parsed is None:
                invalid[partition] = invalid.get(partition, 0) + 1
                continue
            empty_answers = sum(problem.message == "empty answer" for problem in problems)
            entries.append(_Entry(path, index, partition, record, parsed.image_path, empty_answers))
    return entries, partitions, invalid


def validate_files(
    paths: Sequence[str],
    *,
    image_dir: Optional[str] = None,
    check_image_files: bool = True,
    tokenizer_path: Optional[str] = None,
    max_seq_len: Optional[int] = None,
    image_tokens: int = 0,
    num_workers: int = 8,
    progress: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ValidationReport:
    """Validates one or more ShareGPT files (e.g. the train / val / test files of one dataset).

    Args:
        paths (Sequence[str]): ShareGPT JSON files (a list each; JSON Lines is an error, as in training).
        image_dir (Optional[str]): image root overriding each record's ``meta`` ``dir=``
            (without either, images are relative to the JSON file's folder).
        check_image_files (bool): check that images exist and decode, and hash them for leakage.
        tokenizer_path (Optional[str]): a Hugging Face ``tokenizer.json``; without it lengths are
            whitespace words (noted in the report).
        max_seq_len (Optional[int]): records whose first question and answer are longer are errors
            (training refuses them), records longer only in later turns warnings (truncated).
        image_tokens (int): tokens an image adds to a record's length (e.g. 32 placeholders).
        num_workers (int): threads for image checks.
        progress (bool): show progress bars.
        max_image_pixels (int): larger images are errors (training's ``max_image_pixels``).

    Returns:
        ValidationReport: summary, leakage and issues. Never raises on bad data: problems are issues.
    """
    issues: List[Issue] = []
    entries, partitions, invalid = _load(paths, image_dir, issues)

    image_checks = {}
    if check_image_files:
        image_checks = check_images([e.image_path for e in entries if e.image_path], num_workers, progress,
                                    max_image_pixels)
        for entry in entries:
            check = image_checks.get(entry.image_path)
            if check is not None and check.error is not None:
                issues.append(Issue("error", entry.file, entry.index, "image", f"'{entry.image_path}' {check.error}"))
            for note in check.notes if check is not None else []:
                issues.append(Issue("warning", entry.file, entry.index, "image", f"'{entry.image_path}' {note}"))

    def image_identity(entry: _Entry) -> Optional[str]:
        check = image_checks.get(entry.image_path)
        return check.sha1 if check is not None and check.sha1 else entry.image_path

    length_unit = "tokens" if tokenizer_path else "words"
    notes = [] if tokenizer_path else [WORD_COUNT_NOTE]
    image_lengths = np.array([image_tokens if entry.image_path else 0 for entry in entries], dtype=np.int64)
    lengths = _lengths([_record_text(entry.record) for entry in entries], tokenizer_path) + image_lengths
    first_lengths = lengths
    if max_seq_len is not None and any(len(entry.record["conversations"]) > 2 for entry in entries):
        first_lengths = _lengths([_first_exchange_text(entry.record) for entry in entries], tokenizer_path) + image_lengths

    rows = []
    for partition in partitions:
        members = [i for i, entry in enumerate(entries) if entry.partition == partition]
        rows.append(_partition_row(partition, [entries[i] for i in members], lengths[members], first_lengths[members],
                                   invalid, image_checks, image_identity, max_seq_len, issues, length_unit))
    summary = pd.DataFrame(rows)
    leakage = _leakage(entries, partitions, image_identity, issues)
    return ValidationReport(summary, leakage, issues, length_unit, notes)


def _partition_row(partition, members, lengths, first_lengths, invalid, image_checks, image_identity, max_seq_len,
                   issues, unit="tokens") -> dict:
    empty_answers = 0
    duplicate_questions = duplicate_records = 0
    seen_keys, seen_records = set(), set()
    for entry in members:
        empty_answers += entry.empty_answers
        key = (image_identity(entry) if entry.image_path else None, _first_question(entry.record))
        if key in seen_keys:
            duplicate_questions += 1
            issues.append(Issue("warning", entry.file, entry.index, "conversations",
                                "duplicate (same image and question as an earlier record)"))
        seen_keys.add(key)
        serialized = json.dumps(entry.record, sort_keys=True, ensure_ascii=False)
        if serialized in seen_records:
            duplicate_records += 1
            issues.append(Issue("warning", entry.file, entry.index, None, "exact duplicate of an earlier record"))
        seen_records.add(serialized)
    image_paths = {entry.image_path for entry in members if entry.image_path}
    over_limit, refused = [], []
    if max_seq_len is not None:
        for entry, length, first_length in zip(members, lengths, first_lengths):
            if first_length > max_seq_len:
                refused.append(entry.index)
                issues.append(Issue("error", entry.file, entry.index, "conversations",
                                    f"{first_length} {unit} up to the first answer "
                                    f"exceed max_seq_len={max_seq_len}: training refuses the record (it never cuts "
                                    "the image or the first answer); raise max_seq_len or shorten it"))
            elif length > max_seq_len:
                over_limit.append(entry.index)
        if over_limit:
            shown = ", ".join(map(str, over_limit[:10])) + (" ..." if len(over_limit) > 10 else "")
            issues.append(Issue("warning", members[0].file, over_limit[0], "conversations",
                                f"{len(over_limit)} records of {partition} exceed max_seq_len={max_seq_len} after "
                                f"their first answer: training truncates them (records {shown})"))
    has_lengths = len(lengths) > 0
    return {
        "partition": partition,
        "records": len(members) + invalid.get(partition, 0),
        "invalid": invalid.get(partition, 0),
        "images": len(image_paths),
        "missing": sum(1 for p in image_paths if p in image_checks and image_checks[p].error == "missing"),
        "undecodable": sum(
            1 for p in image_paths if p in image_checks and image_checks[p].error not in (None, "missing")
        ),
        "empty_answers": empty_answers,
        "dup_image_question": duplicate_questions,
        "dup_records": duplicate_records,
        "len_p50": int(np.percentile(lengths, 50)) if has_lengths else 0,
        "len_p95": int(np.percentile(lengths, 95)) if has_lengths else 0,
        "len_max": int(lengths.max()) if has_lengths else 0,
        "over_max_seq_len": len(over_limit) + len(refused) if max_seq_len is not None else None,
    }


def _leakage(entries, partitions, image_identity, issues) -> pd.DataFrame:
    images, questions, first_entry = {}, {}, {}
    for partition in partitions:
        members = [entry for entry in entries if entry.partition == partition and entry.image_path]
        images[partition] = {image_identity(entry) for entry in members}
        questions[partition] = {
            (image_identity(entry), _first_question(entry.record).lower()) for entry in members
        }
        first_entry[partition] = members[0] if members else None
    rows = []
    for first, second in itertools.combinations(partitions, 2):
        shared_images = images[first] & images[second]
        if not shared_images:
            continue
        shared_questions = questions[first] & questions[second]
        rows.append({
            "partition_a": first,
            "partition_b": second,
            "shared_images": len(shared_images),
            "images_a": len(images[first]),
            "images_b": len(images[second]),
            "shared_image_questions": len(shared_questions),
        })
        issues.append(Issue("warning", first_entry[second].file, None, "image",
                            f"leakage: {len(shared_images)} of the {len(images[second])} images of {second} "
                            f"also appear in {first} (same file bytes); {len(shared_questions)} "
                            f"image+question pairs shared"))
    columns = ["partition_a", "partition_b", "shared_images", "images_a", "images_b", "shared_image_questions"]
    return pd.DataFrame(rows, columns=columns)


def format_report(report: ValidationReport, max_issues: int = 20) -> str:
    """The report as text: summary table, leakage table, notes and the first issues."""
    lines = ["Summary (lengths in " + report.length_unit + "):", report.summary.to_string(index=False)]
    if len(report.leakage):
        lines += ["", "Leakage between splits (shared images by sha1 of file bytes):",
                  report.leakage.to_string(index=False)]
    lines += [f"note: {note}" for note in report.notes]
    lines += ["", f"{len(report.errors)} errors, {len(report.warnings)} warnings"]
    for issue in report.errors[:max_issues] + report.warnings[:max_issues]:
        lines.append(str(issue))
    hidden = max(0, len(report.errors) - max_issues) + max(0, len(report.warnings) - max_issues)
    if hidden:
        lines.append(f"... {hidden} more (see --json)")
    return "\n".join(lines)
