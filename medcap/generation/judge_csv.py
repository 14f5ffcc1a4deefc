"""Batched, resumable judging of a predictions CSV (the loop that ``recipes/llm_judge.py`` runs).

Two modes, both with the prompts and strict parsers of :mod:`medcap.metrics.judge`:

* ``right_wrong``: medcap's RIGHT/WRONG protocol; the input needs ``question``, ``prediction``
  and ``reference``;
* ``choice``: map a free answer onto lettered options; the input needs ``question``,
  ``prediction`` and ``options`` (a JSON object ``{"A": "...", "B": "..."}``) and may have
  ``reference`` (a letter or an option's text) to score the chosen letter.

Row ``i`` of the input CSV (counted from 0 after the header) is ``row_id`` ``i`` of the output.
The output CSV is appended to and flushed after every batch; a later run skips the row_ids it
already holds, so a killed run resumes where it stopped. A record cut short by a kill (the last
one, without its line end) is dropped on resume and judged again. Replies that do not parse are
kept with an empty ``judgement`` and counted as unparsable; they never stop the run. An output
whose judged rows are not the input's (other predictions) is refused, and a full disk cuts the
output back to its last whole batch and stops with a message naming it.

The judge model is anything with the :class:`Judge` interface (torch-free here), e.g.
:class:`medcap.generation.judge.ChatJudge`.
"""

import contextlib
import csv
import io
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set

import pandas as pd

from medcap.metrics.judge import (
    MODES,
    RIGHT_WRONG,
    build_choice_prompt,
    build_judge_prompt,
    medcap_original_score,
    parse_choice_reply,
    parse_judge_reply,
    parse_options,
    reference_letter,
    summarise_choices,
    summarise_judgements,
)
from medcap.metrics.predictions import read_text_csv
from medcap.utils.atomic import atomic_write, free_bytes, storage_errno, STORAGE_ERRORS, WriteError

REQUIRED_COLUMNS = {
    "right_wrong": ("question", "prediction", "reference"),
    "choice": ("question", "prediction", "options"),
}
OUTPUT_COLUMNS = {
    "right_wrong": ("row_id", "question", "prediction", "reference", "reply", "judgement", "medcap_original"),
    "choice": ("row_id", "question", "prediction", "options", "reference", "reply", "judgement", "correct"),
}


class Judge(Protocol):
    """What the loop needs from a judge model: prompt text -> token ids, and batched replies."""

    max_new_tokens: int
    max_seq_len: Optional[int]

    def encode(self, prompt: str) -> List[int]:
        ...

    def reply(self, prompts: Sequence[List[int]], candidates: Sequence[Sequence[str]]) -> List[str]:
        ...


def read_predictions(path: Path, mode: str) -> pd.DataFrame:
    """Read and validate the predictions CSV to judge.

    Args:
        path (Path): the CSV file.
        mode (str): one of :data:`~medcap.metrics.judge.MODES`.

    Returns:
        pandas.DataFrame: every column as str, empty cells as "" ("NA" stays a string).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown mode, an empty, binary or malformed file, no data rows or a
            missing column (naming the file and the column).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    path = Path(path)
    required = REQUIRED_COLUMNS[mode]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    frame = read_text_csv(path)  # binary, non-UTF-8, broken quotes, ragged rows: named errors
    for column in required:
        if column not in frame.columns:
            raise ValueError(
                f"{path}: missing column {column!r} needed by mode {mode!r} "
                f"(found: {', '.join(map(str, frame.columns))}; required: {', '.join(required)})"
            )
    if len(frame) == 0:
        raise ValueError(f"{path}: no data rows below the header")
    return frame


def _options(frame: pd.DataFrame, row_id: int, path: Path) -> Dict[str, str]:
    return parse_options(frame["options"].iloc[row_id], where=f"{path}: row {row_id}, column 'options'")


def build_prompts(frame: pd.DataFrame, mode: str, path: Path) -> List[str]:
    """The judge prompt of every input row (options validated in choice mode)."""
    if mode == "right_wrong":
        return [build_judge_prompt(q, p, r) for q, p, r in zip(frame["question"], frame["prediction"], frame["reference"])]
    return [build_choice_prompt(q, p, _options(frame, row_id, path))
            for row_id, (q, p) in enumerate(zip(frame["question"], frame["prediction"]))]


def _complete_prefix_length(text: str) -> int:
    """Characters of ``text`` that form whole CSV records (each ends with a line end outside quotes).

    Escaped quotes are doubled, so a record is closed when its quote count is even at a line end.
    """
    complete, quotes = 0, 0
    for index, char in enumerate(text):
        if char == '"':
            quotes += 1
        elif char == "\n" and quotes % 2 == 0:
            complete = index + 1
    return complete


def read_judged(output_path: Path, mode: str) -> pd.DataFrame:
    """The rows an earlier run wrote to ``output_path`` (empty when the file does not exist).

    A trailing partial record (a run killed mid-write) is removed from the file, atomically.

    Raises:
        ValueError: if the file's header is not this mode's output header.
    """
    columns = list(OUTPUT_COLUMNS[mode])
    output_path = Path(output_path)
    if not output_path.is_file() or output_path.stat().st_size == 0:
        return pd.DataFrame(columns=columns)
    text = output_path.read_bytes().decode("utf-8", errors="replace")  # a kill may cut a character
    complete = _complete_prefix_length(text)
    if complete < len(text):
        text = text[:complete]
        atomic_write(output_path, lambda temp: Path(temp).write_text(text, encoding="utf-8", newline=""))
    header = next(csv.reader(io.StringIO(text)), None)
    if header != columns:
        raise ValueError(
            f"{output_path}: existing output has header {header} but mode {mode!r} writes {columns}; "
            "use another output file or the matching mode"
        )
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)


def _append_rows(output_path: Path, columns: Sequence[str], rows: List[Dict[str, Any]], write_header: bool) -> None:
    """Append whole records with one write, then flush and fsync (appending is what makes resuming work).

    A write that fails (a full disk, a quota) is undone: the file is cut back to its size before
    the batch, so it keeps only whole rows, and :class:`~medcap.utils.atomic.WriteError` names it.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    if write_header:
        writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    existed = output_path.is_file()
    size_before = output_path.stat().st_size if existed else 0
    try:
        with open(output_path, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        number = storage_errno(error)
        if number is None:
            raise
        with contextlib.suppress(OSError):
            os.truncate(output_path, size_before)
        raise WriteError(output_path, STORAGE_ERRORS.get(number, str(error)), error_number=number,
                         bytes_needed=len(data), bytes_free=free_bytes(output_path.parent), existed=existed,
                         detail=f"while appending {len(rows)} judged rows") from error


def _check_same_rows(judged: pd.DataFrame, frame: pd.DataFrame, mode: str, input_path: Path, output_path: Path) -> None:
    """An output resumed against other predictions would mix two runs: its judged rows must be the input's."""
    for column in ("question", "prediction"):
        for row_id, value in zip(judged["row_id"], judged[column]):
            row = int(row_id)
            if row >= len(frame) or frame[column].iloc[row] != value:
                found = "no such row" if row >= len(frame) else repr(frame[column].iloc[row])[:60]
                raise ValueError(
                    f"{output_path}: row_id {row} was judged for {column} {value[:60]!r} but {input_path} has "
                    f"{found}: the output belongs to other predictions; use a new output file"
                )


def _judged_row(mode: str, row_id: int, record: pd.Series, reply: str, input_path: Path) -> Dict[str, Any]:
    reply = reply.replace("\x00", "")  # a NUL byte cannot be stored in a CSV cell
    row = {"row_id": row_id, "question": record["question"], "prediction": record["prediction"],
           "reference": record.get("reference", ""), "reply": reply}
    if mode == "right_wrong":
        verdict = parse_judge_reply(reply)
        row["judgement"] = "" if verdict is None else ("RIGHT" if verdict else "WRONG")
        row["medcap_original"] = medcap_original_score(reply)
        return row
    options = parse_options(record["options"], where=f"{input_path}: row {row_id}, column 'options'")
    letter = parse_choice_reply(reply, list(options))
    wanted = reference_letter(row["reference"], options) if row["reference"] else None
    row["options"] = record["options"]
    row["judgement"] = letter or ""
    row["correct"] = "" if wanted is None or letter is None else int(letter == wanted)
    return row


def summarise_output(judged: pd.DataFrame, mode: str) -> Dict[str, Any]:
    """Counts and accuracies over every judged row of an output table.

    ``right_wrong``: :func:`~medcap.metrics.judge.summarise_judgements` plus
    ``medcap_original_accuracy`` (medcap's substring rule over all rows). ``choice``:
    :func:`~medcap.metrics.judge.summarise_choices` (``n``, ``n_parsed``, ``n_unparsable``,
    ``n_scored``, ``n_correct``, ``accuracy_over_scored``, ``choice_counts``).
    """
    if mode == "right_wrong":
        summary = summarise_judgements([{"RIGHT": True, "WRONG": False}.get(value) for value in judged["judgement"]])
        original = pd.to_numeric(judged["medcap_original"])
        summary["medcap_original_accuracy"] = float(original.mean()) if len(judged) else None
        return summary
    return summarise_choices([value or None for value in judged["judgement"]],
                             [None if value == "" else value == "1" for value in judged["correct"]])


def judge_csv(
    input_path: Path,
    output_path: Path,
    judge: Judge,
    mode: str = "right_wrong",
    batch_size: int = 8,
    max_rows: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Judge the rows of ``input_path`` not yet in ``output_path``, appending one batch at a time.

    Args:
        input_path (Path): the predictions CSV (see :func:`read_predictions`).
        output_path (Path): the judgements CSV (created, or resumed when it exists).
        judge (Judge): the judge model, e.g. a :class:`~medcap.generation.judge.ChatJudge`.
        mode (str): ``right_wrong`` or ``choice``.
        batch_size (int): prompts decoded together.
        max_rows (Optional[int]): judge at most this many new rows in this call (None: all).
        progress (bool): show a tqdm bar.

    Returns:
        Dict[str, Any]: :func:`summarise_output` over all judged rows, plus ``judged_this_run``,
        ``already_judged``, ``remaining`` (input rows still unjudged) and ``output``.

    Raises:
        ValueError: bad input (file, row and column named), a mismatching output header, or a
            prompt too long for the decoder (file and row named).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    input_path, output_path = Path(input_path), Path(output_path)
    frame = read_predictions(input_path, mode)
    prompts = build_prompts(frame, mode, input_path)
    judged = read_judged(output_path, mode)
    _check_same_rows(judged, frame, mode, input_path, output_path)
    done: Set[int] = {int(value) for value in judged["row_id"]}
    pending = [row_id for row_id in range(len(frame)) if row_id not in done]
    todo = pending if max_rows is None else pending[:max_rows]
    columns = OUTPUT_COLUMNS[mode]
    output_path.parent.mkdir(parents=True, exist_ok=True)
    write_header = not output_path.is_file() or output_path.stat().st_size == 0

    batches = [todo[start: start + batch_size] for start in range(0, len(todo), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="judging", unit="batch")
    for batch in batches:
        encoded = [judge.encode(prompts[row_id]) for row_id in batch]
        for row_id, tokens in zip(batch, encoded):
            if judge.max_seq_len is not None and len(tokens) + judge.max_new_tokens > judge.max_seq_len:
                raise ValueError(
                    f"{input_path}: row {row_id}: the judge prompt has {len(tokens)} tokens; with "
                    f"max_new_tokens={judge.max_new_tokens} it exceeds the decoder's max_seq_len={judge.max_seq_len}"
                )
        candidates = [RIGHT_WRONG if mode == "right_wrong" else list(_options(frame, row_id, input_path)) for row_id in batch]
        replies = judge.reply(encoded, candidates)
        rows = [_judged_row(mode, row_id, frame.iloc[row_id], reply, input_path) for row_id, reply in zip(batch, replies)]
        _append_rows(output_path, columns, rows, write_header)
        write_header = False

    summary = summarise_output(read_judged(output_path, mode), mode)
    summary.update({
        "judged_this_run": len(todo),
        "already_judged": len(done),
        "remaining": len(pending) - len(todo),
        "output": str(output_path),
    })
    return summary
