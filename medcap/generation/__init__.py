"""Batched KV-cache decoding and prompt building."""

from medcap.generation.decode import generate, sample_next_token

__all__ = ["generate", "sample_next_token"]
