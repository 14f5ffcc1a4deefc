"""Batched, resumable LLM judging of a predictions CSV (the loop behind ``tools/llm_judge.py``).

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
kept with an empty ``judgement`` and counted as unparsable; they never stop the run.
"""

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set

import pandas as pd
import torch
from torch import nn
from torchtune.data import Message

from medcap.checkpoint.io import atomic_write
from medcap.generation.decode import generate
from medcap.metrics.judge import (
    build_choice_prompt,
    build_judge_prompt,
    medcap_original_score,
    parse_choice_reply,
    parse_judge_reply,
    summarise_judgements,
)
from medcap.metrics.vqa import normalize_answer
from medcap.models.fusion import MedcapModel

MODES = ("right_wrong", "choice")
RIGHT_WRONG = ("RIGHT", "WRONG")  # the allowed replies of the right_wrong mode
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


class ChatJudge:
    """A chat decoder answering each judge prompt as one user turn.

    By default the reply is generated greedily and parsed afterwards. With
    ``score_candidates=True`` the reply is instead the allowed answer ("RIGHT"/"WRONG", or an
    option letter) to which the model gives the highest log-likelihood right after the assistant
    header: it always parses, which makes small models usable, but it is a different protocol
    from medcap's (the model never gets to say something else).

    Args:
        model (MedcapModel): a text-only model (:func:`medcap.models.text_only_model`), eval mode.
        tokenizer (Any): a torchtune chat tokenizer (``tokenize_messages``, ``decode``,
            ``stop_tokens``, ``pad_id``), e.g. Llama-3's or SmolLM2's ChatML tokenizer.
        max_new_tokens (int): longest reply in tokens (RIGHT/WRONG or a letter needs few).
        system_prompt (Optional[str]): an optional system turn before the user turn.
        score_candidates (bool): pick the likeliest allowed answer instead of generating.

    Attributes:
        max_seq_len (Optional[int]): the decoder's longest sequence (prompt + reply).
    """

    def __init__(self, model: MedcapModel, tokenizer: Any, max_new_tokens: int = 16, system_prompt: Optional[str] = None,
                 score_candidates: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.score_candidates = score_candidates
        self.max_seq_len = getattr(model.decoder, "max_seq_len", None)

    def encode(self, prompt: str) -> List[int]:
        """Token ids of the chat prompt, ending with the assistant header."""
        messages = [Message(role="system", content=self.system_prompt)] if self.system_prompt else []
        messages += [Message(role="user", content=prompt), Message(role="assistant", content="")]
        tokens, _ = self.tokenizer.tokenize_messages(messages, add_end_tokens=False)
        return tokens

    def reply(self, prompts: Sequence[List[int]], candidates: Sequence[Sequence[str]]) -> List[str]:
        """Replies to a batch of encoded prompts.

        Args:
            prompts (Sequence[List[int]]): encoded prompts (:meth:`encode`).
            candidates (Sequence[Sequence[str]]): the allowed answers of each prompt (used only
                with ``score_candidates``).

        Returns:
            List[str]: one reply per prompt.
        """
        if self.score_candidates:
            return self.likeliest(prompts, candidates)
        generated = generate(
            self.model, prompts, pad_id=self.tokenizer.pad_id, stop_tokens=self.tokenizer.stop_tokens,
            max_new_tokens=self.max_new_tokens, temperature=0.0,
        )
        return [self.tokenizer.decode(ids) for ids in generated]

    @torch.inference_mode()
    def likeliest(self, prompts: Sequence[List[int]], candidates: Sequence[Sequence[str]]) -> List[str]:
        """The candidate with the highest summed token log-probability after each prompt.

        Every (prompt, candidate) pair is one right-padded sequence of a single causal forward:
        right padding never changes the logits of earlier positions.
        """
        pairs = [(row, text, prompt + self.tokenizer.encode(text, add_bos=False, add_eos=False))
                 for row, (prompt, texts) in enumerate(zip(prompts, candidates)) for text in texts]
        device = self.model.decoder.tok_embeddings.weight.device
        longest = max(len(sequence) for _, _, sequence in pairs)
        tokens = torch.full((len(pairs), longest), self.tokenizer.pad_id, dtype=torch.long, device=device)  # [p, s]
        for index, (_, _, sequence) in enumerate(pairs):
            tokens[index, : len(sequence)] = torch.tensor(sequence, device=device)
        log_probs = torch.log_softmax(self.model.lm_head(self.model(tokens)), dim=-1)  # [p, s, vocab]
        best: List[Optional[str]] = [None] * len(prompts)
        best_score = [float("-inf")] * len(prompts)
        for index, (row, text, sequence) in enumerate(pairs):
            start = len(prompts[row])  # first candidate token, predicted at position start - 1
            targets = tokens[index, start: len(sequence)]  # [c]
            score = float(log_probs[index, start - 1: len(sequence) - 1].gather(-1, targets[:, None]).sum())
            if score > best_score[row]:
                best[row], best_score[row] = text, score
        return [text or "" for text in best]


def read_predictions(path: Path, mode: str) -> pd.DataFrame:
    """Read and validate the predictions CSV to judge.

    Args:
        path (Path): the CSV file.
        mode (str): one of :data:`MODES`.

    Returns:
        pandas.DataFrame: every column as str, empty cells as "" ("NA" stays a string).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unknown mode, an empty file, no data rows or a missing column (naming the
            file and the column).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    path = Path(path)
    required = REQUIRED_COLUMNS[mode]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: empty file, expected a header with columns {', '.join(required)}") from None
    for column in required:
        if column not in frame.columns:
            raise ValueError(
                f"{path}: missing column {column!r} needed by mode {mode!r} "
                f"(found: {', '.join(map(str, frame.columns))}; required: {', '.join(required)})"
            )
    if len(frame) == 0:
        raise ValueError(f"{path}: no data rows below the header")
    return frame


def parse_options(text: str, path: Path, row_id: int) -> Dict[str, str]:
    """The ``options`` cell of a row as ``{letter: text}``, in the file's order.

    Raises:
        ValueError: naming the file, row and column when the cell is not a JSON object of
            single-letter keys to strings.
    """
    where = f"{path}: row {row_id}, column 'options'"
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error.msg}): {text[:80]!r}") from None
    if not isinstance(options, dict) or not options:
        raise ValueError(f"{where}: expected a non-empty JSON object like {{\"A\": \"...\"}}, got {text[:80]!r}")
    for letter, option in options.items():
        if len(letter) != 1 or not letter.isalpha() or not isinstance(option, str):
            raise ValueError(f"{where}: option {letter!r}: keys must be single letters and values strings")
    return options


def reference_letter(reference: str, options: Dict[str, str]) -> Optional[str]:
    """The option a reference names: its letter ("b", "B.") or its text (normalised exact match).

    Returns:
        Optional[str]: an upper-case letter of ``options``, or None when the reference names none.
    """
    letter = reference.strip().rstrip(".)").lstrip("(").upper()
    by_letter = {key.upper(): key for key in options}
    if letter in by_letter:
        return letter
    wanted = normalize_answer(reference)
    matches = [key.upper() for key, text in options.items() if normalize_answer(text) == wanted]
    return matches[0] if len(matches) == 1 else None


def build_prompts(frame: pd.DataFrame, mode: str, path: Path) -> List[str]:
    """The judge prompt of every input row (options validated in choice mode)."""
    if mode == "right_wrong":
        return [build_judge_prompt(q, p, r) for q, p, r in zip(frame["question"], frame["prediction"], frame["reference"])]
    return [
        build_choice_prompt(q, p, parse_options(o, path, row_id))
        for row_id, (q, p, o) in enumerate(zip(frame["question"], frame["prediction"], frame["options"]))
    ]


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
        atomic_write(output_path, lambda temp: Path(temp).write_text(text[:complete], encoding="utf-8", newline=""))
        text = text[:complete]
    header = next(csv.reader(io.StringIO(text)), None)
    if header != columns:
        raise ValueError(
            f"{output_path}: existing output has header {header} but mode {mode!r} writes {columns}; "
            "use another output file or the matching mode"
        )
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)


def _append_rows(output_path: Path, columns: Sequence[str], rows: List[Dict[str, Any]], write_header: bool) -> None:
    """Append whole records with one write, then flush and fsync."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    if write_header:
        writer.writeheader()
    writer.writerows(rows)
    with open(output_path, "a", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def _judged_row(mode: str, row_id: int, record: pd.Series, reply: str, input_path: Path) -> Dict[str, Any]:
    reply = reply.replace("\x00", "")  # a NUL byte cannot be stored in a CSV cell
    row = {"row_id": row_id, "question": record["question"], "prediction": record["prediction"],
           "reference": record.get("reference", ""), "reply": reply}
    if mode == "right_wrong":
        verdict = parse_judge_reply(reply)
        row["judgement"] = "" if verdict is None else ("RIGHT" if verdict else "WRONG")
        row["medcap_original"] = medcap_original_score(reply)
        return row
    options = parse_options(record["options"], input_path, row_id)
    letter = parse_choice_reply(reply, list(options))
    wanted = reference_letter(row["reference"], options) if row["reference"] else None
    row["options"] = record["options"]
    row["judgement"] = letter or ""
    row["correct"] = "" if wanted is None or letter is None else int(letter == wanted)
    return row


def summarise_output(judged: pd.DataFrame, mode: str) -> Dict[str, Any]:
    """Counts and accuracies over every judged row of an output table.

    ``right_wrong``: :func:`~medcap.metrics.judge.summarise_judgements` plus
    ``medcap_original_accuracy`` (medcap's substring rule over all rows). ``choice``: ``n``,
    ``n_parsed``, ``n_unparsable``, ``n_scored`` (parsed rows whose reference names an option),
    ``n_correct``, ``accuracy_over_scored`` and ``choice_counts`` (letter -> rows).
    """
    n = len(judged)
    if mode == "right_wrong":
        verdicts = [{"RIGHT": True, "WRONG": False}.get(value) for value in judged["judgement"]]
        summary = summarise_judgements(verdicts)
        original = pd.to_numeric(judged["medcap_original"])
        summary["medcap_original_accuracy"] = float(original.mean()) if n else None
        return summary
    letters = [value for value in judged["judgement"] if value]
    scored = [int(value) for value in judged["correct"] if value != ""]
    return {
        "n": n,
        "n_parsed": len(letters),
        "n_unparsable": n - len(letters),
        "n_scored": len(scored),
        "n_correct": sum(scored),
        "accuracy_over_scored": sum(scored) / len(scored) if scored else None,
        "choice_counts": {letter: letters.count(letter) for letter in sorted(set(letters))},
    }


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
        judge (Judge): the judge model, e.g. a :class:`ChatJudge`.
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
        candidates = [RIGHT_WRONG if mode == "right_wrong" else list(parse_options(frame["options"].iloc[row_id], input_path, row_id))
                      for row_id in batch]
        replies = judge.reply(encoded, candidates)
        rows = [_judged_row(mode, row_id, frame.iloc[row_id], reply, input_path) for row_id, reply in zip(batch, replies)]
        _append_rows(output_path, columns, rows, write_header)
        write_header = False

    all_judged = read_judged(output_path, mode)
    summary = summarise_output(all_judged, mode)
    summary.update({
        "judged_this_run": len(todo),
        "already_judged": len(done),
        "remaining": len(pending) - len(todo),
        "output": str(output_path),
    })
    return summary


def quantize_linear_4bit(module: nn.Module, compute_dtype: torch.dtype, quant_type: str = "nf4", skip: Sequence[str] = ("output",)) -> int:
    """Replace every ``nn.Linear`` under ``module`` by a bitsandbytes ``Linear4bit`` (in place).

    The weights are quantised when the module is next moved with ``.to(device)`` (CPU or CUDA).
    ``skip`` names child modules left in full precision (by default the LM head ``output``, as
    bitsandbytes' Hugging Face integration does).

    Args:
        module (nn.Module): e.g. a loaded torchtune ``TransformerDecoder``.
        compute_dtype (torch.dtype): dtype of the matmuls (the model's dtype).
        quant_type (str): ``nf4`` or ``fp4``.
        skip (Sequence[str]): qualified names of modules not to quantise.

    Returns:
        int: the number of replaced layers.
    """
    import bitsandbytes as bnb

    replaced = 0
    for name, child in list(module.named_modules()):
        if name in skip or not isinstance(child, nn.Linear):
            continue
        quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type=quant_type, device=child.weight.device)
        quantized.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type=quant_type)
        if child.bias is not None:
            quantized.bias = nn.Parameter(child.bias.data, requires_grad=False)
        parent_name, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attribute, quantized)
        replaced += 1
    return replaced
