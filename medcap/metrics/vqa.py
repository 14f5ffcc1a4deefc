"""Medical VQA metrics: the protocols papers report, re-implemented as pure functions.

Four families, each documented with its exact normalisation:

* ``exact``: our own normalised exact match (:func:`normalize_answer`). ``closed_accuracy`` is
  the exact-match rate over CLOSED rows, ``open_exact_match`` over OPEN rows.
* ``llava_med``: LLaVA-Med's ``llava/eval/run_eval.py`` (microsoft/LLaVA-Med, tag v1.0.0,
  commit b9a98a7): open-question recall (:func:`llava_med_f1_precision_recall`) and the
  yes/no rule for closed questions (:func:`llava_med_closed_hit`), quirks included.
* ``medpalm``: Med-PaLM M's BLEU-1 and token F1 as the BLIP-2 reproduction computes them
  (Mrabbi3/biomed-multimodal-reproduction, ``evaluation/metrics.py``): :func:`medpalm_bleu1`,
  :func:`medpalm_token_f1`, averaged over all rows.
* ``medevalkit``: MedEvalKit's exact-match VQA scoring (alibaba-damo-academy/MedEvalKit,
  ``utils/VQA_RAD/VQA_RAD.py`` and ``utils/SLAKE/SLAKE.py``, the protocol behind the Lingshu and
  MedGemma tables): closed = the reference is yes/no (VQA-RAD rule, :func:`medevalkit_vqa_rad_hit`)
  or the dataset's answer type (SLAKE rule, :func:`medevalkit_slake_hit`).

:func:`vqa_row_scores` gives the per-row scores behind every key (for bootstrap intervals and
paired tests, :mod:`medcap.metrics.stats`); :func:`vqa_scores` aggregates per-row scores into percentages, with optional breakdowns per
answer type and per question type.
"""

import re
import string
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from medcap.data.schema import ANSWER_TYPES, normalize_answer_type  # noqa: F401  (re-exported)
from medcap.metrics.stats import RowScores

# Protocol group name -> metric names it reports (the contract of tools/score.py).
PROTOCOL_METRICS = {
    "llava_med": ("llava_med_open_recall", "llava_med_closed_accuracy"),
    "exact": ("closed_accuracy", "open_exact_match", "exact_match"),
    "medpalm": ("bleu1", "token_f1"),
    "medevalkit": (
        "medevalkit_accuracy", "medevalkit_closed_accuracy", "medevalkit_open_accuracy",
        "medevalkit_slake_accuracy", "medevalkit_slake_closed_accuracy", "medevalkit_slake_open_accuracy",
    ),
}
PROTOCOLS = tuple(PROTOCOL_METRICS) + ("all",)
# Metrics whose per-row score is 0 or 1 (McNemar's test applies to them).
BINARY_METRICS = frozenset({
    "llava_med_closed_accuracy", "closed_accuracy", "open_exact_match", "exact_match",
    *PROTOCOL_METRICS["medevalkit"],
})


# ---------------------------------------------------------------------------------------------
# Our normalised exact match
# ---------------------------------------------------------------------------------------------

_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(char: str) -> bool:
    return char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """Normalise an answer for exact match.

    Steps, in order: lowercase (``str.lower``); delete every punctuation character (the ASCII
    set ``string.punctuation``, i.e. ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``, plus any Unicode
    character of category ``P*`` such as ``，`` or ``。``), without inserting a space, so
    ``"x-ray"`` becomes ``"xray"``; collapse runs of whitespace to one space and strip the ends.
    Articles and number words are kept (``"the liver"`` != ``"liver"``).

    Args:
        text (str): an answer.

    Returns:
        str: the normalised answer.
    """
    lowered = text.lower()
    without_punctuation = "".join(c for c in lowered if not _is_punctuation(c))
    return " ".join(without_punctuation.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0.

    See :func:`normalize_answer` for the normalisation.
    """
    return float(normalize_answer(prediction) == normalize_answer(reference))


# ---------------------------------------------------------------------------------------------
# LLaVA-Med (microsoft/LLaVA-Med v1.0.0, llava/eval/run_eval.py and llava/eval/eval_metrics/)
# ---------------------------------------------------------------------------------------------

# llava/eval/eval_metrics/glossary.py: the VQA-challenge normalisation tables.
_LLAVA_MED_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_LLAVA_MED_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_LLAVA_MED_ARTICLES = ("a", "an", "the")
# The original pattern, typo included: "(?!<=\d)" is a negative *lookahead* for the text "<="
# followed by a digit, not a lookbehind, so in effect a period is removed unless a digit
# follows it ("3.5" keeps its period, "5." and "x.ray" lose theirs).
_LLAVA_MED_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_LLAVA_MED_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_LLAVA_MED_PUNCT = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)
# The original calls period_strip.sub("", text, re.UNICODE): the third positional argument of
# Pattern.sub is *count*, so at most int(re.UNICODE) == 32 periods are removed.
_LLAVA_MED_PERIOD_STRIP_COUNT = int(re.UNICODE)


def llava_med_normalize_word(text: str) -> str:
    """LLaVA-Med's ``normalize_word``, faithfully.

    Source: microsoft/LLaVA-Med, tag v1.0.0 (commit b9a98a7),
    ``llava/eval/eval_metrics/glossary.py``, ``normalize_word``. Steps, in order:

    1. For each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: if the *original* text holds
       that character followed or preceded by a space, or holds a digit-comma-digit anywhere,
       the character is deleted everywhere; otherwise it is replaced by a space everywhere
       (``"x-ray"`` -> ``"x ray"`` but ``"x-ray - chest"`` -> ``"xray  chest"``).
    2. Periods not followed by a digit are deleted, at most 32 of them (``re.UNICODE`` passed
       as ``count``). ``:``, ``'``, ``*``, ``%``, ``#`` and ``&`` are kept.
    3. Lowercase, split on whitespace; number words zero..ten map to digits and **"none" maps
       to "0"**; the articles a/an/the are dropped; contractions such as "dont" -> "don't"
       are expanded; words are joined with one space and any remaining comma is deleted.

    Args:
        text (str): an answer.

    Returns:
        str: the normalised answer.
    """
    original = text
    result = text
    for mark in _LLAVA_MED_PUNCT:
        if (mark + " " in original or " " + mark in original) or (
            re.search(_LLAVA_MED_COMMA_STRIP, original) is not None
        ):
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    result = _LLAVA_MED_PERIOD_STRIP.sub("", result, _LLAVA_MED_PERIOD_STRIP_COUNT)

    words = []
    for word in result.lower().split():
        word = _LLAVA_MED_NUMBER_WORDS.get(word, word)
        if word not in _LLAVA_MED_ARTICLES:
            words.append(word)
    words = [_LLAVA_MED_CONTRACTIONS.get(word, word) for word in words]
    return " ".join(words).replace(",", "")


def _llava_med_run_eval_normalize(text: str) -> str:
    # run_eval.py: value = normalize_word(value.lower())
    return llava_med_normalize_word(text.lower())


def _llava_med_word_counts(sentence: str) -> Counter:
    # eval_metrics/utils.py split_sentence(sentence, 1): lowercase, strip, split on whitespace.
    return Counter(sentence.lower().strip().split())


def llava_med_f1_precision_recall(prediction: str, reference: str) -> tuple[float, float, float]:
    """LLaVA-Med's token F1, precision and recall for one OPEN answer, faithfully.

    Source: microsoft/LLaVA-Med, tag v1.0.0 (commit b9a98a7): ``llava/eval/run_eval.py``
    ``evaluate`` normalises both strings (``normalize_word(value.lower())``) and calls
    ``calculate_f1score(pred_value, gt_value)`` from ``llava/eval/eval_metrics/
    evaluate_metrics.py``, which normalises both again and counts words with
    ``split_sentence(..., 1)``. Quirks kept:

    * a word present in both strings adds its count **in the prediction** to the true
      positives, so repeating a correct word raises recall: reference "left lung",
      prediction "left left left" gives tp = 3, fn = 1, recall = 3/4 (not 1/2);
    * a reference word absent from the prediction adds its reference count to fn;
    * an empty prediction or reference (after normalisation) or tp = 0 gives (0, 0, 0).

    Args:
        prediction (str): the model's answer.
        reference (str): the ground-truth answer.

    Returns:
        tuple[float, float, float]: (f1, precision, recall) in [0, 1].
    """
    candidate = llava_med_normalize_word(_llava_med_run_eval_normalize(prediction))
    gold = llava_med_normalize_word(_llava_med_run_eval_normalize(reference))
    candidate_words = _llava_med_word_counts(candidate)
    reference_words = _llava_med_word_counts(gold)
    if not candidate_words or not reference_words:
        return 0.0, 0.0, 0.0

    true_positives = false_positives = false_negatives = 0
    for word in set(candidate_words) | set(reference_words):
        if word in candidate_words and word in reference_words:
            true_positives += candidate_words[word]
        elif word in candidate_words:
            false_positives += candidate_words[word]
        else:
            false_negatives += reference_words[word]
    if true_positives == 0:
        return 0.0, 0.0, 0.0
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / (true_positives + false_negatives)
    return 2 * precision * recall / (precision + recall), precision, recall


def llava_med_open_recall(prediction: str, reference: str) -> float:
    """Recall of :func:`llava_med_f1_precision_recall`: the "open" number LLaVA-Med reports."""
    return llava_med_f1_precision_recall(prediction, reference)[2]


def llava_med_closed_hit(prediction: str, reference: str) -> float:
    """LLaVA-Med's closed-question rule, faithfully (every CLOSED row counts).

    Source: microsoft/LLaVA-Med, tag v1.0.0 (commit b9a98a7), ``llava/eval/run_eval.py``,
    ``evaluate``, the ``answer_type == 'CLOSED'`` branch after "fix closed accuracy
    calculation" (PR #35). Older copies of the file append nothing for a wrong answer that
    mentions yes/no, which drops such rows from the denominator; here every row scores 0 or 1.

    Both strings go through ``normalize_word(value.lower())``; the row scores 1 when
    ``'yes' in pred or 'no' in pred`` **and** ``reference in pred``, all *substring* tests:

    * "no" matches inside "not", "normal", "nodule", "know"; "yes" inside "eyes";
    * a prediction holding both "yes" and "no" is right whatever the reference;
    * a CLOSED reference that is not yes/no (e.g. "left") scores 0 unless the prediction also
      contains "yes" or "no" somewhere ("left" -> 0, "left, not right" -> 1).

    Args:
        prediction (str): the model's answer.
        reference (str): the ground-truth answer.

    Returns:
        float: 1.0 or 0.0.
    """
    pred_value = _llava_med_run_eval_normalize(prediction)
    gt_value = _llava_med_run_eval_normalize(reference)
    mentions_yes_no = "yes" in pred_value or "no" in pred_value
    return float(mentions_yes_no and gt_value in pred_value)


# ---------------------------------------------------------------------------------------------
# Med-PaLM M BLEU-1 / token F1 (Mrabbi3/biomed-multimodal-reproduction, evaluation/metrics.py)
# ---------------------------------------------------------------------------------------------


def _medpalm_tokenize(text: str) -> list[str]:
    # evaluation/metrics.py tokenize: text.lower().strip().split(); punctuation is kept.
    return text.lower().strip().split()


def medpalm_bleu1(prediction: str, reference: str) -> float:
    """Med-PaLM M VQA BLEU-1 as the BLIP-2 reproduction computes it.

    Source: Mrabbi3/biomed-multimodal-reproduction (commit bbef672), ``evaluation/metrics.py``,
    ``compute_bleu1``. Tokens: lowercase, split on whitespace; punctuation stays attached
    ("yes." != "yes"). Score = clipped unigram matches / prediction length, **with no brevity
    penalty** (prediction "yes" scores 1.0 against reference "yes there is"); an empty
    prediction scores 0.

    Args:
        prediction (str): the model's answer.
        reference (str): the ground-truth answer.

    Returns:
        float: BLEU-1 in [0, 1].
    """
    prediction_tokens = _medpalm_tokenize(prediction)
    if not prediction_tokens:
        return 0.0
    reference_counts = Counter(_medpalm_tokenize(reference))
    clipped = sum(
        min(count, reference_counts.get(token, 0))
        for token, count in Counter(prediction_tokens).items()
    )
    return clipped / len(prediction_tokens)


def medpalm_token_f1(prediction: str, reference: str) -> float:
    """Med-PaLM M VQA token F1 as the BLIP-2 reproduction computes it.

    Source: Mrabbi3/biomed-multimodal-reproduction (commit bbef672), ``evaluation/metrics.py``,
    ``compute_f1_token``. Same tokens as :func:`medpalm_bleu1`; common tokens are the
    multiset intersection; F1 of precision (common / prediction length) and recall
    (common / reference length). Both empty -> 1.0; one empty or nothing in common -> 0.0.

    Args:
        prediction (str): the model's answer.
        reference (str): the ground-truth answer.

    Returns:
        float: token F1 in [0, 1].
    """
    prediction_tokens = _medpalm_tokenize(prediction)
    reference_tokens = _medpalm_tokenize(reference)
    if not prediction_tokens and not reference_tokens:
        return 1.0
    if not prediction_tokens or not reference_tokens:
        return 0.0
    common = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(prediction_tokens)
    recall = common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# MedEvalKit (alibaba-damo-academy/MedEvalKit: utils/VQA_RAD/VQA_RAD.py, utils/SLAKE/SLAKE.py,
# utils/utils.py; mathruler.grader.extract_boxed_content)
# ---------------------------------------------------------------------------------------------

_MEDEVALKIT_YES_NO = ("yes", "no")
# utils.py parse_response: each pattern present in the (already split) response splits it again,
# keeping the text after its last occurrence.
_MEDEVALKIT_ANSWER_PATTERNS = (
    "**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:", "答案:", "final answer",
    "final answer is",
)


def _medevalkit_extract_boxed(text: str) -> str:
    # mathruler.grader.extract_boxed_content: the last "\boxed{", up to its matching brace,
    # stripped; the *string* "None" when there is no complete box.
    start = text.rfind("\\boxed{")
    if start != -1:
        content = text[start + len("\\boxed{"):]
        depth = 0
        for index, char in enumerate(content):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            if depth == -1:
                return content[:index].strip()
    return "None"


def _medevalkit_extract_tag(text: str, tag: str) -> str:
    # utils.py extract(text, tag, hard=True) with get_content_between_a_b: every complete
    # <tag>...</tag> body, each followed by a space, stripped; the whole text when there is none.
    if not text:
        return ""
    opening, closing = f"<{tag}>", f"</{tag}>"
    found = ""
    start = text.find(opening)
    while start != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:
            break
        found += text[start + len(opening):end] + " "
        start = text.find(opening, end + len(closing))
    return found.strip() or text


def medevalkit_parse_response(response: str) -> str:
    """MedEvalKit's ``parse_response`` (``utils/utils.py``), faithfully.

    Lowercase; if the text contains ``boxed`` take the last ``\\boxed{...}`` (the string
    ``"None"`` when there is no complete box, e.g. a reply that merely says "boxed"), else if it
    contains ``<answer>`` the ``<answer>...</answer>`` bodies; then for each of ``**answer**:``,
    ``**answer**``, ``*answer*:``, ``**answer:**``, ``answer is``, ``answer:``, ``答案:``,
    ``final answer``, ``final answer is`` present, keep what follows its last occurrence (so
    "the answer is yes" becomes " yes", leading space kept). Nothing is stripped.
    """
    response = response.lower()
    if "boxed" in response:
        response = _medevalkit_extract_boxed(response)
    elif "<answer>" in response:
        response = _medevalkit_extract_tag(response, "answer")
    for pattern in _MEDEVALKIT_ANSWER_PATTERNS:
        if pattern in response:
            response = response.split(pattern)[-1]
    return response


def _medevalkit_cal_metrics_response(response: str) -> str:
    # the first lines of cal_metrics (VQA_RAD.py and SLAKE.py): a complete \boxed{} wins, else
    # the <answer> bodies, else the reply as is.
    boxed = _medevalkit_extract_boxed(response)
    if boxed != "None":
        return boxed
    if "<answer>" in response:
        return _medevalkit_extract_tag(response, "answer")
    return response


def medevalkit_judgement(prediction: str, reference: str) -> float:
    """MedEvalKit's ``judge_judgement(answer, response)`` for a yes/no reference, faithfully.

    The reference is lowercased; the reply goes through :func:`medevalkit_parse_response` and
    loses its line breaks and periods. It scores 1 when **exactly one** of "yes" / "no" occurs in
    it (substring tests, so "no" inside "nodule", "normal", "not", "know", "cannot" counts, and
    "yes, a nodule" holds both and scores 0) and the reference occurs in it (substring).

    Args:
        prediction (str): the model's reply.
        reference (str): the ground truth (yes or no).

    Returns:
        float: 1.0 or 0.0.
    """
    answer = reference.lower()
    response = medevalkit_parse_response(prediction).replace("\n", "").replace(".", "")
    return float((("yes" in response) != ("no" in response)) and answer in response)


def medevalkit_close_end_match(prediction: str, reference: str) -> float:
    """MedEvalKit's ``judge_close_end_vqa(answer, response)``, faithfully.

    1 when the parsed reply without line breaks and periods equals the lowercased reference;
    spaces are not stripped ("ct " does not equal "ct").
    """
    response = medevalkit_parse_response(prediction).replace("\n", "").replace(".", "")
    return float(response == reference.lower())


def medevalkit_open_match(prediction: str, reference: str) -> float:
    """The ``em`` of MedEvalKit's ``judge_open_end_vqa(answer, response)``, faithfully.

    1 when the parsed reply (:func:`medevalkit_parse_response`; periods kept, nothing stripped)
    equals the lowercased reference: "liver." does not match "liver".
    """
    return float(medevalkit_parse_response(prediction) == reference.lower())


def medevalkit_is_closed(reference: str) -> bool:
    """VQA_RAD.py's split: a question is closed when its reference, lowercased and stripped, is
    "yes" or "no" (the dataset's own answer type is not read)."""
    return reference.lower().strip() in _MEDEVALKIT_YES_NO


def medevalkit_vqa_rad_hit(prediction: str, reference: str) -> float:
    """One row as MedEvalKit's ``VQA_RAD.cal_metrics`` scores it (exact match: no LLM judge).

    Source: alibaba-damo-academy/MedEvalKit, ``utils/VQA_RAD/VQA_RAD.py`` (commit 564d279). The
    reply's complete ``\\boxed{}`` (else its ``<answer>`` bodies) replaces it; reply and
    reference are lowercased and stripped; a yes/no reference is judged by
    :func:`medevalkit_judgement`, any other by :func:`medevalkit_open_match`.
    """
    response = _medevalkit_cal_metrics_response(prediction).lower().strip()
    answer = reference.lower().strip()
    if answer in _MEDEVALKIT_YES_NO:
        return medevalkit_judgement(response, answer)
    return medevalkit_open_match(response, answer)


def medevalkit_slake_hit(prediction: str, reference: str, answer_type: str) -> float:
    """One row as MedEvalKit's ``SLAKE.cal_metrics`` scores it (exact match: no LLM judge).

    Source: alibaba-damo-academy/MedEvalKit, ``utils/SLAKE/SLAKE.py`` (commit c3651c9). Here the
    dataset's answer type decides: OPEN rows by :func:`medevalkit_open_match`; CLOSED rows whose
    reference is exactly ``"yes"`` or ``"no"`` (case-sensitive, not stripped) by
    :func:`medevalkit_judgement`, every other CLOSED row by :func:`medevalkit_close_end_match`.
    Neither reply nor reference is stripped. SLAKE's own references are capitalised ("Yes",
    "No"), so on SLAKE every closed question goes to the strict whole-answer match.

    Args:
        prediction (str): the model's reply.
        reference (str): the ground truth.
        answer_type (str): "CLOSED" or "OPEN".
    """
    response = _medevalkit_cal_metrics_response(prediction)
    if answer_type == "OPEN":
        return medevalkit_open_match(response, reference)
    if reference in _MEDEVALKIT_YES_NO:
        return medevalkit_judgement(response, reference)
    return medevalkit_close_end_match(response, reference)


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Metric:
    score: Callable[[str, str, str], float]  # (prediction, reference, answer type) -> score
    applies: Callable[[str, str], bool]  # (reference, answer type) -> row counts for the metric
    all_rows: bool = False  # averages over every row: gets answer_type breakdowns


def _pair(scorer: Callable[[str, str], float]) -> Callable[[str, str, str], float]:
    return lambda prediction, reference, _answer_type: scorer(prediction, reference)


def _answer_type_is(wanted: str) -> Callable[[str, str], bool]:
    return lambda _reference, answer_type: answer_type == wanted


def _every_row(_reference: str, _answer_type: str) -> bool:
    return True


_METRICS: dict[str, _Metric] = {
    "llava_med_open_recall": _Metric(_pair(llava_med_open_recall), _answer_type_is("OPEN")),
    "llava_med_closed_accuracy": _Metric(_pair(llava_med_closed_hit), _answer_type_is("CLOSED")),
    "closed_accuracy": _Metric(_pair(exact_match), _answer_type_is("CLOSED")),
    "open_exact_match": _Metric(_pair(exact_match), _answer_type_is("OPEN")),
    "exact_match": _Metric(_pair(exact_match), _every_row, all_rows=True),
    "bleu1": _Metric(_pair(medpalm_bleu1), _every_row, all_rows=True),
    "token_f1": _Metric(_pair(medpalm_token_f1), _every_row, all_rows=True),
    "medevalkit_accuracy": _Metric(_pair(medevalkit_vqa_rad_hit), _every_row, all_rows=True),
    "medevalkit_closed_accuracy": _Metric(_pair(medevalkit_vqa_rad_hit), lambda ref, _t: medevalkit_is_closed(ref)),
    "medevalkit_open_accuracy": _Metric(_pair(medevalkit_vqa_rad_hit), lambda ref, _t: not medevalkit_is_closed(ref)),
    "medevalkit_slake_accuracy": _Metric(medevalkit_slake_hit, _every_row, all_rows=True),
    "medevalkit_slake_closed_accuracy": _Metric(medevalkit_slake_hit, _answer_type_is("CLOSED")),
    "medevalkit_slake_open_accuracy": _Metric(medevalkit_slake_hit, _answer_type_is("OPEN")),
}


def metrics_for_protocols(protocols: Sequence[str]) -> list[str]:
    """Metric names reported for the given protocol groups, in a stable order.

    Args:
        protocols (Sequence[str]): names from :data:`PROTOCOLS`; "all" means every group.

    Returns:
        list[str]: metric names.

    Raises:
        ValueError: if a protocol name is unknown.
    """
    unknown = [name for name in protocols if name not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol {unknown[0]!r}; choose from {', '.join(PROTOCOLS)}")
    groups = PROTOCOL_METRICS if "all" in protocols else {p: PROTOCOL_METRICS[p] for p in protocols}
    return [metric for name in PROTOCOL_METRICS if name in groups for metric in groups[name]]


def is_binary_key(key: str) -> bool:
    """Whether a score key (``metric`` or ``metric/breakdown``) is a mean of 0/1 per-row scores."""
    return key.split("/", 1)[0] in BINARY_METRICS


def _percent(values: list[float]) -> Optional[float]:
    return 100.0 * sum(values) / len(values) if values else None


def vqa_row_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    answer_types: Sequence[str],
    question_types: Optional[Sequence[str]] = None,
    protocols: Sequence[str] = ("all",),
) -> dict[str, RowScores]:
    """The per-row scores behind every key of :func:`vqa_scores`, in the same key order.

    Arguments as for :func:`vqa_scores`.

    Returns:
        dict[str, RowScores]: key -> (row indices, per-row scores in [0, 1]); a key whose metric
        applies to no row has empty lists.
    """
    lengths = {len(predictions), len(references), len(answer_types)}
    if question_types is not None:
        lengths.add(len(question_types))
    if len(lengths) != 1:
        raise ValueError(f"predictions, references, answer_types, question_types differ in length: {lengths}")
    metric_names = metrics_for_protocols(protocols)

    row_answer_types = []
    for index, answer_type in enumerate(answer_types):
        normalized = normalize_answer_type(answer_type)
        if normalized is None:
            raise ValueError(f"row {index}: answer_type {answer_type!r} is not CLOSED or OPEN")
        row_answer_types.append(normalized)
    row_question_types = (
        [q.strip() for q in question_types] if question_types is not None else [""] * len(predictions)
    )

    scores: dict[str, RowScores] = {}
    for metric in metric_names:
        spec = _METRICS[metric]
        overall = RowScores([], [])
        by_answer_type: dict[str, RowScores] = {t: RowScores([], []) for t in ANSWER_TYPES}
        by_question_type: dict[str, RowScores] = defaultdict(lambda: RowScores([], []))
        for row, (prediction, reference, answer_type, question_type) in enumerate(zip(
            predictions, references, row_answer_types, row_question_types
        )):
            if not spec.applies(reference, answer_type):
                continue
            value = spec.score(prediction, reference, answer_type)
            for group in (overall, by_answer_type[answer_type]) + ((by_question_type[question_type],) if question_type else ()):
                group.rows.append(row)
                group.values.append(value)
        scores[metric] = overall
        if spec.all_rows:
            for answer_type in ANSWER_TYPES:
                scores[f"{metric}/answer_type={answer_type}"] = by_answer_type[answer_type]
        for question_type in sorted(by_question_type):
            scores[f"{metric}/question_type={question_type}"] = by_question_type[question_type]
    return scores


def vqa_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    answer_types: Sequence[str],
    question_types: Optional[Sequence[str]] = None,
    protocols: Sequence[str] = ("all",),
) -> dict[str, Optional[float]]:
    """Score VQA answers; each metric is the mean per-row score over the rows it applies to.

    Keys: the metrics of the selected protocol groups (:data:`PROTOCOL_METRICS`), always
    present; metrics that average over all rows (``exact_match``, ``bleu1``, ``token_f1``,
    ``medevalkit_accuracy``, ``medevalkit_slake_accuracy``) also get
    ``{metric}/answer_type=CLOSED`` and ``.../answer_type=OPEN`` (None when no row of that
    type); when ``question_types`` is given, every metric gets ``{metric}/question_type={value}``
    for each distinct non-empty value among the rows it applies to (stripped, otherwise as
    written, e.g. "PRES, POS"; empty = unknown, no key).

    Args:
        predictions (Sequence[str]): model answers.
        references (Sequence[str]): ground-truth answers.
        answer_types (Sequence[str]): "CLOSED" or "OPEN" per row (case and surrounding
            spaces ignored).
        question_types (Optional[Sequence[str]]): question type per row, "" when unknown.
        protocols (Sequence[str]): protocol groups, see :data:`PROTOCOLS`.

    Returns:
        dict[str, Optional[float]]: metric name -> percentage in [0, 100], None when no row
        applies.

    Raises:
        ValueError: on sequences of different lengths, an answer type other than
            CLOSED/OPEN (naming the row index) or an unknown protocol.
    """
    rows = vqa_row_scores(predictions, references, answer_types, question_types, protocols)
    return {key: _percent(scores.values) for key, scores in rows.items()}
