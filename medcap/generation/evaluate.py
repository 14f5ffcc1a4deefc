"""Score a predictions table: VQA rows with the VQA protocols, caption rows with captioning metrics;
bootstrap intervals of the VQA scores and of ``well_formed``."""

from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from medcap.data.schema import ANSWER_TYPES
from medcap.metrics import caption_metrics, vqa_scores
from medcap.metrics.predictions import Bootstrap, answer_form_row_scores, frame_intervals, frame_row_scores
from medcap.metrics.stats import Interval


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
    is_vqa = answer_types.isin(ANSWER_TYPES)
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


def answer_form_rates(predictions: pd.DataFrame, train_records: List[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Share of answers (percent) that take a form seen in training for their question type.

    The forms of a (answer_type, question_type) are the normalised answers its train records use
    (e.g. yes/no, "0".."3", "upper left"...). Caption rows are not counted. The per-row hits are
    :func:`medcap.metrics.predictions.answer_form_row_scores`.

    Args:
        predictions (pd.DataFrame): ``prediction``, ``answer_type``, ``question_type`` columns.
        train_records (List[Dict[str, Any]]): the training ShareGPT records.

    Returns:
        Dict[str, Optional[float]]: ``well_formed`` over all VQA rows and
        ``well_formed/question_type=...`` per type; None when no row applies.
    """
    hits = answer_form_row_scores(predictions, train_records)
    return {name: 100.0 * sum(scores.values) / len(scores.values) for name, scores in hits.items()}


def prediction_intervals(
    predictions: pd.DataFrame,
    train_records: Optional[List[Dict[str, Any]]] = None,
    bootstrap: Bootstrap = Bootstrap(),
) -> Tuple[Dict[str, Interval], Dict[str, Any]]:
    """Bootstrap intervals (percent) of every VQA key of :func:`score_predictions` and, with
    ``train_records``, of ``well_formed``; resampled by image when images hold several questions.

    Returns:
        Tuple[Dict[str, Interval], Dict[str, Any]]: key -> interval, and how they were computed
        (:func:`medcap.metrics.predictions.bootstrap_description`).
    """
    row_scores = frame_row_scores(predictions)
    if train_records is not None:
        row_scores.update(answer_form_row_scores(predictions, train_records))
    return frame_intervals(predictions, row_scores, bootstrap)
