"""Tokenizer builders. Truncation is left to :class:`~medcap.data.transform.MedcapTransform`."""

from typing import Optional

from torchtune.models.llama3 import Llama3Tokenizer
from torchtune.models.llama3 import llama3_tokenizer as _torchtune_llama3_tokenizer


def llama3_tokenizer(path: str, special_tokens_path: Optional[str] = None) -> Llama3Tokenizer:
    """Llama-3 / 3.1 tokenizer (tiktoken) with ``<|image|>`` as the image placeholder.

    Args:
        path (str): ``original/tokenizer.model`` of a Llama-3 checkpoint.
        special_tokens_path (Optional[str]): HF-style JSON with ``added_tokens`` to move the special
            tokens (e.g. to low ids for a tiny test vocabulary).

    Returns:
        Llama3Tokenizer: the tokenizer (no internal truncation).
    """
    return _torchtune_llama3_tokenizer(path, special_tokens_path=special_tokens_path, max_seq_len=None)
