"""Batched KV-cache decoding, prompt modes, scoring of predictions, and the LLM judge's runtime."""

from medcap.generation.decode import generate, sample_next_token
from medcap.generation.evaluate import answer_form_rates, score_predictions
from medcap.generation.judge import ChatJudge
from medcap.generation.judge_csv import judge_csv
from medcap.generation.judge_quantize import quantize_linear_4bit
from medcap.generation.prompts import DESCRIBE_INSTRUCTION, describe_then_answer_prompt, direct_prompt

__all__ = [
    "ChatJudge", "DESCRIBE_INSTRUCTION", "answer_form_rates", "describe_then_answer_prompt", "direct_prompt", "generate",
    "judge_csv", "quantize_linear_4bit", "sample_next_token", "score_predictions",
]
