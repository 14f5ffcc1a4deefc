"""Batched KV-cache decoding, prompt modes and scoring of predictions."""

from medcap.generation.decode import generate, sample_next_token
from medcap.generation.evaluate import answer_form_rates, score_predictions
from medcap.generation.prompts import DESCRIBE_INSTRUCTION, describe_then_answer_prompt, direct_prompt

__all__ = ["DESCRIBE_INSTRUCTION", "answer_form_rates", "describe_then_answer_prompt", "direct_prompt", "generate", "sample_next_token", "score_predictions"]
