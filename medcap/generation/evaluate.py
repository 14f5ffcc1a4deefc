"""Score a predictions table: VQA rows with the VQA protocols, caption rows with captioning metrics."""

from typing import Dict, Optional

import pandas as pd

from medcap.metrics import caption_metrics, vqa_scores

VQA_TYPES = ("CLOSED", "OPEN")


def score_predictions(predictions: pd.DataFrame, meteor: bool = True) -> Dict[str, Optional[float]]:
    """Metrics of one checkpoint's predictions.

    Rows whose ``answer_type`` is CLOSED/OPEN (spaces and case ignored) are VQA: every VQA protocol
    (percent). The others are captions: BLEU-1..4, METEOR, ROUGE-L, CIDEr (as pycocoevalcap reports
    them, x100 to match the percent scale), SPICE when available.

    Args:
        predictions (pd.DataFrame): columns ``question``, ``reference``, ``prediction``,
            ``answer_type`` and optionally ``question_type``.
        meteor (bool): compute METEOR (a Java start, ~11 s).

    Returns:
        Dict[str, Optional[float]]: metric -> value, plus ``n_vqa`` and ``n_caption`` row counts.
    """
    answer_types = predictions["answer_type"].fillna("").astype(str).str.strip().str.upper()
    is_vqa = answer_types.isin(VQA_TYPES)
    scores: Dict[str, Optional[float]] = {"n_vqa": int(is_vqa.sum()), "n_caption": int((~is_vqa).sum())}
    vqa = predictions[is_vqa]
    if len(vqa):
        question_types = vqa["question_type"].fillna("").astype(str).tolist() if "question_type" in vqa else None
        scores.update(vqa_scores(vqa["prediction"].astype(str).tolist(), vqa["reference"].astype(str).tolist(),
                                 answer_types[is_vqa].tolist(), question_types))
    captions = predictions[~is_vqa]
    if len(captions):
        result = caption_metrics(captions["prediction"].astype(str).tolist(), captions["reference"].astype(str).tolist(),
                                 meteor=meteor, spice=True)
        scores.update({name: None if value is None else 100 * value for name, value in result.scores.items()})
    return scores
