"""Evaluation metrics: captioning (pycocoevalcap), VQA protocols, LLM-judge prompts and parsers.

Pure functions: nothing here imports ``medcap.generation`` or ``medcap.models`` (the judge's model
runtime is :mod:`medcap.generation.judge`).
"""

from medcap.metrics.baselines import compute_baselines
from medcap.metrics.captioning import (
    CAPTION_METRICS,
    CaptionMetrics,
    caption_metrics,
    spice_unavailable_reason,
)
from medcap.metrics.judge import (
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
from medcap.metrics.vqa import (
    PROTOCOL_METRICS,
    PROTOCOLS,
    exact_match,
    llava_med_closed_hit,
    llava_med_f1_precision_recall,
    llava_med_normalize_word,
    llava_med_open_recall,
    medpalm_bleu1,
    medpalm_token_f1,
    normalize_answer,
    vqa_scores,
)

__all__ = [
    "CAPTION_METRICS",
    "CaptionMetrics",
    "PROTOCOLS",
    "PROTOCOL_METRICS",
    "build_choice_prompt",
    "build_judge_prompt",
    "caption_metrics",
    "compute_baselines",
    "exact_match",
    "llava_med_closed_hit",
    "llava_med_f1_precision_recall",
    "llava_med_normalize_word",
    "llava_med_open_recall",
    "medcap_original_score",
    "medpalm_bleu1",
    "medpalm_token_f1",
    "normalize_answer",
    "parse_choice_reply",
    "parse_judge_reply",
    "parse_options",
    "reference_letter",
    "spice_unavailable_reason",
    "summarise_choices",
    "summarise_judgements",
    "vqa_scores",
]
