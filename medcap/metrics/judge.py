"""LLM-judge protocol for VQA: prompts and reply parsing (the pure part; decoding lives elsewhere).

medcap's original judge (myeongkyunkang/medcap) asks an LLM to "Respond with only RIGHT or
WRONG" given ``Question: ... / Our answer: ... / Correct answer: ...`` and scores a reply 1 when
``'right' in reply.lower()``, else 0 (:func:`medcap_original_score`). That rule counts
"Not right", "WRONG, the right answer is..." or "Alright" as correct; :func:`parse_judge_reply`
is the strict parser used for reporting, and unparsable replies are counted apart
(:func:`summarise_judgements`).

The multiple-choice mode follows medcap's OmniMedVQA judge (``torchtune/custom_generate_func.py``,
``eval_vqa``): the options are listed as ``A. ...`` lines and the judge answers with a letter
(:func:`parse_options` reads an ``options`` cell, :func:`reference_letter` the option a
reference names, :func:`summarise_choices` counts the letters).

Pure functions on strings: the judge model runs in :mod:`medcap.generation.judge`, the resumable
CSV loop is :mod:`medcap.generation.judge_csv`, the launcher is ``recipes/llm_judge.py``.
"""

import json
import re
from typing import Dict, Mapping, Optional, Sequence

from medcap.metrics.vqa import normalize_answer

MODES = ("right_wrong", "choice")  # the judge's two protocols
RIGHT_WRONG = ("RIGHT", "WRONG")  # the allowed replies of the right_wrong mode

JUDGE_INSTRUCTION = (
    "Respond with only RIGHT or WRONG. "
    "Is our answer to the medical question correct given the correct answer?"
)
CHOICE_INSTRUCTION = (
    "Based on the question and our answer, respond with only the letter of the correct option "
    "from the given choices."
)

# Leading decoration stripped before looking at the first word: whitespace, markdown
# (* _ ` # > ~), quotes, brackets and punctuation.
_DECORATION = " \t\r\n*_`#>~\"'“”‘’()[]{}<>.,:;!?-–—|"
_WORD = re.compile(r"[A-Za-z]+")
_CLAUSE_END = re.compile(r"[.!?;:\n]")
_CHOICE = re.compile(
    r"^(?P<prefix>(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*)?"
    r"[(\[*_`\"']*(?P<letter>[A-Za-z])(?P<after>$|[.)\]:,\-*_`\"'/]|\s)",
    re.IGNORECASE,
)
_SECOND_LETTER = re.compile(r"[)\]*_`\"'.]*\s*(?:or|/|,|and)\s*[(\[]?([A-Za-z])(?![A-Za-z])", re.IGNORECASE)


def build_judge_prompt(question: str, prediction: str, reference: str) -> str:
    """The RIGHT/WRONG judge prompt.

    Args:
        question (str): the VQA question.
        prediction (str): the model's answer ("Our answer").
        reference (str): the ground-truth answer ("Correct answer").

    Returns:
        str: ``JUDGE_INSTRUCTION`` then ``Question: {question}``, ``Our answer: {prediction}``,
        ``Correct answer: {reference}`` on their own lines.
    """
    return (
        f"{JUDGE_INSTRUCTION}\n"
        f"Question: {question}\n"
        f"Our answer: {prediction}\n"
        f"Correct answer: {reference}"
    )


def parse_judge_reply(reply: str) -> Optional[bool]:
    """Strictly parse a RIGHT/WRONG reply.

    The reply is stripped of surrounding whitespace, markdown (``**``, ``_``, backticks,
    ``#``, ``>``), quotes, brackets and punctuation; its first word (a run of letters) decides,
    case-insensitively: RIGHT -> True, WRONG -> False. Unparsable (None): an empty reply,
    another first word ("Correct", "The answer is right", "Alright"), or both verdicts in the
    first clause, i.e. before the first ``. ! ? ; :`` or line break ("RIGHT/WRONG",
    "Right or wrong", "Right, but wrong format"). A later clause may name the other word:
    "WRONG. The right answer is yes." is WRONG.

    Args:
        reply (str): the judge's reply.

    Returns:
        Optional[bool]: True for RIGHT, False for WRONG, None when unparsable.
    """
    stripped = reply.strip(_DECORATION)
    match = _WORD.match(stripped)
    first = match.group(0).upper() if match else None
    if first not in ("RIGHT", "WRONG"):
        return None
    first_clause = _CLAUSE_END.split(stripped, maxsplit=1)[0]
    verdicts = {word.upper() for word in _WORD.findall(first_clause)} & {"RIGHT", "WRONG"}
    if len(verdicts) == 2:
        return None
    return first == "RIGHT"


def medcap_original_score(reply: str) -> int:
    """medcap's original rule, kept for comparison: 1 when 'right' is in the lowercased reply.

    Source: myeongkyunkang/medcap (README-era judge, see docs/metrics.md). Substring test, so
    "Not right", "Alright" and "WRONG (the right answer is yes)" all score 1.
    """
    return int("right" in reply.lower())


def build_choice_prompt(question: str, prediction: str, options: Mapping[str, str]) -> str:
    """A multiple-choice judge prompt: map a free-text answer onto lettered options.

    Layout of medcap's OmniMedVQA judge: ``Question: ...``, ``Our answer: ...``, one
    ``{letter}. {text}`` line per option in the given order, a blank line, then
    ``CHOICE_INSTRUCTION``.

    Args:
        question (str): the question.
        prediction (str): the model's answer.
        options (Mapping[str, str]): letter -> option text, e.g. {"A": "CT", "B": "MRI"}.

    Returns:
        str: the prompt.

    Raises:
        ValueError: if ``options`` is empty or a key is not a single letter.
    """
    if not options:
        raise ValueError("options is empty: a choice prompt needs at least one option")
    for letter in options:
        if len(letter) != 1 or not letter.isalpha():
            raise ValueError(f"option key {letter!r} is not a single letter")
    option_lines = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return f"Question: {question}\nOur answer: {prediction}\n{option_lines}\n\n{CHOICE_INSTRUCTION}"


def parse_choice_reply(reply: str, letters: Sequence[str]) -> Optional[str]:
    """Parse a multiple-choice reply into one of ``letters``.

    After stripping surrounding whitespace, markdown, quotes, brackets and punctuation, the
    reply must start with an allowed letter (case-insensitive) that stands alone: it ends the
    reply or is followed by one of ``. ) ] : , -`` ("B", "(b)", "**B.**", "B. MRI", "B) MRI").
    A leading "Answer:", "Option", "Choice", "The answer is" or "The correct option is" is
    allowed, and after such a prefix a space may follow the letter ("Option B is correct").
    None when unparsable: no such letter ("A chest CT" starts with the article "A", "MRI",
    ""), a letter outside ``letters``, or two different allowed letters offered
    ("A or B", "A, B", "A/B").

    medcap's original rule was ``reply.strip()[0].upper()`` (the first character), which reads
    "A chest CT" as option A and "Bone" as option B.

    Args:
        reply (str): the judge's reply.
        letters (Sequence[str]): allowed option letters, e.g. "ABCD" or ["A", "B"].

    Returns:
        Optional[str]: the chosen letter (upper case), or None when unparsable.
    """
    allowed = {letter.upper() for letter in letters}
    text = reply.strip(_DECORATION)
    match = _CHOICE.match(text)
    if match is None:
        return None
    letter = match.group("letter").upper()
    followed_by_space = match.group("after").isspace()
    if letter not in allowed or (followed_by_space and not match.group("prefix")):
        return None
    rest = text[match.end("letter"):]
    other = _SECOND_LETTER.match(rest)
    if other is not None and other.group(1).upper() in allowed and other.group(1).upper() != letter:
        return None
    return letter


def summarise_judgements(judgements: Sequence[Optional[bool]]) -> dict:
    """Summarise parsed judge verdicts.

    Args:
        judgements (Sequence[Optional[bool]]): True (right), False (wrong), None (unparsable).

    Returns:
        dict: ``n`` (all), ``n_right``, ``n_wrong``, ``n_unparsable``,
        ``accuracy_over_parsable`` (n_right / (n_right + n_wrong), None if no parsable
        verdict) and ``accuracy_unparsable_as_wrong`` (n_right / n, None if n == 0); both
        accuracies are fractions in [0, 1].
    """
    n_right = sum(1 for j in judgements if j is True)
    n_wrong = sum(1 for j in judgements if j is False)
    n_unparsable = sum(1 for j in judgements if j is None)
    n = len(judgements)
    n_parsable = n_right + n_wrong
    return {
        "n": n,
        "n_right": n_right,
        "n_wrong": n_wrong,
        "n_unparsable": n_unparsable,
        "accuracy_over_parsable": n_right / n_parsable if n_parsable else None,
        "accuracy_unparsable_as_wrong": n_right / n if n else None,
    }


def parse_options(text: str, where: str = "options") -> Dict[str, str]:
    """An ``options`` cell (a JSON object ``{"A": "...", "B": "..."}``) as ``{letter: text}``, in order.

    Args:
        text (str): the cell.
        where (str): named in error messages, e.g. ``"p.csv: row 3, column 'options'"``.

    Returns:
        Dict[str, str]: letter -> option text, in the cell's order.

    Raises:
        ValueError: naming ``where`` when the cell is not a non-empty JSON object of
            single-letter keys to strings.
    """
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


def reference_letter(reference: str, options: Mapping[str, str]) -> Optional[str]:
    """The option a reference names: its letter ("b", "B.", "(B)") or its text (normalised exact match).

    Args:
        reference (str): the reference answer.
        options (Mapping[str, str]): letter -> option text.

    Returns:
        Optional[str]: an upper-case letter of ``options``, or None when the reference names none
        (or its text matches several options).
    """
    letter = reference.strip().rstrip(".)").lstrip("(").upper()
    if letter in {key.upper() for key in options}:
        return letter
    wanted = normalize_answer(reference)
    matches = [key.upper() for key, text in options.items() if normalize_answer(text) == wanted]
    return matches[0] if len(matches) == 1 else None


def summarise_choices(letters: Sequence[Optional[str]], correct: Sequence[Optional[bool]]) -> dict:
    """Summarise multiple-choice judgements.

    Args:
        letters (Sequence[Optional[str]]): the parsed letter of each row, None when unparsable.
        correct (Sequence[Optional[bool]]): per row, whether the letter is the reference's
            option; None when the row is not scored (unparsable, or no option named by the
            reference).

    Returns:
        dict: ``n``, ``n_parsed``, ``n_unparsable``, ``n_scored``, ``n_correct``,
        ``accuracy_over_scored`` (n_correct / n_scored, None if nothing is scored) and
        ``choice_counts`` (letter -> rows, letters sorted).
    """
    parsed = [letter for letter in letters if letter]
    scored = [bool(value) for value in correct if value is not None]
    return {
        "n": len(letters),
        "n_parsed": len(parsed),
        "n_unparsable": len(letters) - len(parsed),
        "n_scored": len(scored),
        "n_correct": sum(scored),
        "accuracy_over_scored": sum(scored) / len(scored) if scored else None,
        "choice_counts": {letter: parsed.count(letter) for letter in sorted(set(parsed))},
    }
