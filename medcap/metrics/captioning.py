"""Captioning metrics with pycocoevalcap, as medcap's original ``test_metrics`` computes them.

One reference per prediction, corpus level: predictions and references are tokenised by the
Stanford PTBTokenizer (lowercase, punctuation tokens removed), then scored by BLEU-1..4
(corpus-level n-gram counts, "closest" reference length), METEOR 1.5, ROUGE-L (mean of
per-caption LCS F-measures, beta 1.2) and CIDEr-D (document frequencies from the references of
this corpus). SPICE runs only when its Stanford CoreNLP jars are present; otherwise it is
reported as unavailable, with the reason.

pycocoevalcap needs Java; its PTBTokenizer writes temporary files inside its own package
directory, and METEOR loads a paraphrase table on every call (~11 s on a 2-core CPU), hence the
``meteor`` switch.
"""

import contextlib
import io
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
_SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


@dataclass
class CaptionMetrics:
    """Scores of one corpus.

    Attributes:
        scores (dict[str, Optional[float]]): metric name (:data:`CAPTION_METRICS`) -> score as
            pycocoevalcap returns it (a fraction in [0, 1]; CIDEr in [0, 10]), None when the
            metric was not computed.
        unavailable (dict[str, str]): metric name -> why it was not computed.
    """

    scores: dict[str, Optional[float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


def spice_unavailable_reason(spice_dir: Optional[str] = None) -> Optional[str]:
    """Why SPICE cannot run here, or None when its jars are present.

    pycocoevalcap's ``Spice()`` downloads Stanford CoreNLP 3.6.0 into ``spice/lib`` on first use;
    offline that download fails, so the jars are checked first.

    Args:
        spice_dir (Optional[str]): pycocoevalcap's ``spice`` directory; default: the installed one.

    Returns:
        Optional[str]: a reason naming the missing file, or None.
    """
    if spice_dir is None:
        import pycocoevalcap.spice.spice as spice_module

        spice_dir = os.path.dirname(os.path.abspath(spice_module.__file__))
    for jar in ("spice-1.0.jar",) + tuple(os.path.join("lib", j) for j in _SPICE_CORENLP_JARS):
        path = os.path.join(spice_dir, jar)
        if not os.path.isfile(path):
            return (
                f"SPICE needs {path}, which is missing "
                "(pycocoevalcap downloads it on first use; offline it cannot)"
            )
    return None


def _coco_format(captions: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    # COCO layout {image_id: [{"caption": text}]}; ids are row indices as strings, as in medcap.
    return {str(index): [{"caption": caption}] for index, caption in enumerate(captions)}


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    meteor: bool = True,
    spice: bool = True,
) -> CaptionMetrics:
    """Corpus-level captioning metrics, one reference per prediction.

    Args:
        predictions (Sequence[str]): generated captions.
        references (Sequence[str]): reference captions, ``references[i]`` for ``predictions[i]``.
        meteor (bool): compute METEOR (starts a Java process, ~11 s).
        spice (bool): compute SPICE when its jars are present.

    Returns:
        CaptionMetrics: every name of :data:`CAPTION_METRICS` is in ``scores``; those not
        computed are None and have a reason in ``unavailable``.

    Raises:
        ValueError: on empty input, lengths that differ or a caption that is not a str
            (naming its index).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no captions to score")
    for name, captions in (("predictions", predictions), ("references", references)):
        for index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise ValueError(f"{name}[{index}] is {type(caption).__name__}, not str")

    tokenizer = PTBTokenizer()
    tokenized_references = tokenizer.tokenize(_coco_format(references))
    tokenized_predictions = tokenizer.tokenize(_coco_format(predictions))

    result = CaptionMetrics(scores={name: None for name in CAPTION_METRICS})
    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its counts
        bleu, _ = Bleu(4).compute_score(tokenized_references, tokenized_predictions, verbose=0)
    for n, score in enumerate(bleu, start=1):
        result.scores[f"BLEU-{n}"] = float(score)
    result.scores["ROUGE-L"] = float(Rouge().compute_score(tokenized_references, tokenized_predictions)[0])
    result.scores["CIDEr"] = float(Cider().compute_score(tokenized_references, tokenized_predictions)[0])

    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            meteor_score, _ = scorer.compute_score(tokenized_references, tokenized_predictions)
            result.scores["METEOR"] = float(meteor_score)
        finally:
            del scorer  # closes the Java process
    else:
        result.unavailable["METEOR"] = "not requested (meteor=False)"

    reason = spice_unavailable_reason() if spice else "not requested (spice=False)"
    if reason is None:
        result.scores["SPICE"], reason = _spice_score(tokenized_references, tokenized_predictions)
    if reason is not None:
        result.unavailable["SPICE"] = reason
    return result


def _spice_score(references: dict, predictions: dict) -> tuple[Optional[float], Optional[str]]:
    import subprocess

    from pycocoevalcap.spice.spice import Spice

    try:
        return float(Spice().compute_score(references, predictions)[0]), None
    except (OSError, subprocess.CalledProcessError, ValueError) as error:
        return None, f"SPICE failed: {type(error).__name__}: {error}"
