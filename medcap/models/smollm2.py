# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""SmolLM2-135M-Instruct: decoder and tokenizer builders.

Weights come from ``tools/import_gguf.py --smollm2 --output DIR``; load them with
``FullModelHFCheckpointer(checkpoint_dir=DIR, checkpoint_files=["model.safetensors"],
model_type="LLAMA3_2", ...)``.
"""

from pathlib import Path
from typing import Optional

from torchtune.models.llama3_2._component_builders import llama3_2
from torchtune.modules import TransformerDecoder

from medcap.models.chatml_tokenizer import ChatMLTokenizer

SMOLLM2_VOCAB_SIZE = 49152


def smollm2_135m(max_seq_len: int = 2048) -> TransformerDecoder:
    """Build the SmolLM2-135M decoder (Llama architecture, tied input/output embeddings).

    30 layers, dim 576, 9 query heads and 3 key/value heads of dim 64, SwiGLU hidden 1536,
    vocabulary 49152, RMSNorm eps 1e-5, RoPE base 100000 without scaling.

    Args:
        max_seq_len (int): longest sequence (sizes the RoPE cache and the KV cache).
            Default: 2048.

    Returns:
        TransformerDecoder: the decoder; ``output`` is a ``TiedLinear`` over ``tok_embeddings``.
    """
    # torchtune's Llama 3.2 builder always uses Llama3ScaledRoPE; with scale_factor=1 its
    # frequencies equal plain RoPE's.
    return llama3_2(
        vocab_size=SMOLLM2_VOCAB_SIZE,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        embed_dim=576,
        max_seq_len=max_seq_len,
        intermediate_dim=1536,
        rope_base=100_000,
        norm_eps=1e-5,
        scale_factor=1,
        tie_word_embeddings=True,
    )


def smollm2_tokenizer(
    path: str, image_token_id: int = SMOLLM2_VOCAB_SIZE, max_seq_len: Optional[int] = None
) -> ChatMLTokenizer:
    """Build the ChatML tokenizer of a converted SmolLM2 checkpoint.

    Args:
        path (str): the directory written by ``tools/import_gguf.py`` or its ``tokenizer.json``;
            ``tokenizer_config.json`` is read from the same directory.
        image_token_id (int): id emitted for each image item, outside the text vocabulary.
            Default: 49152.
        max_seq_len (Optional[int]): truncate token lists to this length. Default: None.

    Returns:
        ChatMLTokenizer: the tokenizer.

    Raises:
        FileNotFoundError: if ``tokenizer.json`` or ``tokenizer_config.json`` is missing.
    """
    path = Path(path)
    tokenizer_json = path / "tokenizer.json" if path.is_dir() else path
    tokenizer_config = tokenizer_json.parent / "tokenizer_config.json"
    for required in (tokenizer_json, tokenizer_config):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required} not found; convert the model first: "
                "python tools/import_gguf.py --smollm2 --output DIR"
            )
    return ChatMLTokenizer(
        str(tokenizer_json),
        str(tokenizer_config),
        image_token_id=image_token_id,
        max_seq_len=max_seq_len,
    )
