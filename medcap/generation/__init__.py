"""Batched KV-cache decoding, prompt modes and scoring of predictions."""

from medcap.generation.decode import generate, sample_next_token
from medcap.generation.evaluate import score_predictions
from medcap.generation.prompts import DESCRIBE_INSTRUCTION, describe_then_answer_prompt, direct_prompt

__all__ = ["DESCRIBE_INSTRUCTION", "describe_then_answer_prompt", "direct_prompt", "generate", "sample_next_token", "score_predictions"]
