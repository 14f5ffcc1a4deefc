"""Decoder LoRA adapters on disk, in the PEFT layout torchtune writes.

Beside the image encoder of every epoch::

    epoch_{n}/adapter_model.safetensors   # base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight ...
    epoch_{n}/adapter_config.json         # {"r", "lora_alpha", "lora_dropout", "target_modules", "peft_type": "LORA"}

Keys and the q/k ``lora_B`` row order are converted with torchtune's
``tune_to_peft_adapter_weights`` / ``tune_to_peft_adapter_config`` (Hugging Face's rotary layout),
so a Hugging Face PEFT ``PeftModel`` over the Hugging Face base reads the same adapter; loading
applies the exact inverse, so save -> load is bit-exact.
"""

import json
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medcap.models.lora import adapter_names, lora_of, reset_decoder_adapters
from medcap.utils.atomic import atomic_write

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."


def _head_dims(decoder: nn.Module) -> Dict[str, int]:
    attn = decoder.layers[0].attn
    return {"num_heads": attn.num_heads, "num_kv_heads": attn.num_kv_heads, "dim": attn.embed_dim, "head_dim": attn.head_dim}


def decoder_adapter_state(decoder: nn.Module) -> Dict[str, torch.Tensor]:
    """The decoder's LoRA parameters in torchtune names (``layers.0.attn.q_proj.lora_a.weight`` ...)."""
    params = dict(decoder.named_parameters())
    return {name: params[name].detach() for name in adapter_names(decoder)}


def save_decoder_adapters(
    decoder: nn.Module, directory: Path, base_model: Optional[str] = None, state: Optional[Dict[str, torch.Tensor]] = None
) -> Optional[Path]:
    """Write the decoder's adapters (PEFT layout) into ``directory``; nothing for a decoder without LoRA.

    Args:
        decoder (nn.Module): the adapted decoder.
        directory (Path): e.g. ``output_dir/epoch_3``.
        base_model (Optional[str]): recorded as ``base_model_name_or_path`` (the decoder's checkpoint dir).
        state (Optional[Dict[str, torch.Tensor]]): the adapters' full tensors in torchtune names, when the
            decoder's own are shards (FSDP2: gather them first); default: the decoder's parameters.

    Returns:
        Optional[Path]: the weights file, or None when the decoder has no adapters.
    """
    from torchtune.models.convert_weights import tune_to_peft_adapter_config, tune_to_peft_adapter_weights

    lora = lora_of(decoder)
    if lora is None:
        return None
    state = {k: v.contiguous().cpu() for k, v in (state if state is not None else decoder_adapter_state(decoder)).items()}
    peft_state = tune_to_peft_adapter_weights(state, **_head_dims(decoder))
    config = tune_to_peft_adapter_config(
        {"r": lora.rank, "lora_alpha": lora.alpha, "target_modules": list(lora.target_modules)}, base_model_name_or_path=base_model
    )
    config.update({"peft_type": "LORA", "lora_dropout": lora.dropout, "bias": "none", "task_type": "CAUSAL_LM"})
    directory = Path(directory)
    path = directory / ADAPTER_WEIGHTS_FILE
    atomic_write(path, lambda temp: save_file({k: v.contiguous() for k, v in peft_state.items()}, temp, metadata={"format": "pt"}))
    atomic_write(directory / ADAPTER_CONFIG_FILE, lambda temp: Path(temp).write_text(json.dumps(config, indent=2) + "\n"))
    return path


def _peft_to_tune(peft_state: Dict[str, torch.Tensor], decoder: nn.Module, path: Path) -> Dict[str, torch.Tensor]:
    """The exact inverse of torchtune's ``tune_to_peft_adapter_weights`` for this decoder."""
    from torchtune.models.convert_weights import tune_to_peft_adapter_weights

    dims = _head_dims(decoder)
    # map names through the forward conversion of a zero state with the model's own keys
    forward = tune_to_peft_adapter_weights({k: torch.zeros(v.shape) for k, v in decoder_adapter_state(decoder).items()}, **dims)
    names = dict(zip(forward.keys(), decoder_adapter_state(decoder).keys()))
    missing, unexpected = sorted(set(names) - set(peft_state)), sorted(set(peft_state) - set(names))
    if missing or unexpected:
        raise ValueError(f"{path}: adapters do not fit this decoder: missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    state = {}
    for peft_name, value in peft_state.items():
        name = names[peft_name]
        if ".lora_b." in name and (".q_proj." in name or ".k_proj." in name):
            heads = dims["num_heads"] if ".q_proj." in name else dims["num_kv_heads"]
            rank = value.shape[-1]
            value = value.view(heads, 2, dims["head_dim"] // 2, rank).transpose(1, 2).reshape(heads * dims["head_dim"], rank)
        state[name] = value
    return state


def load_decoder_adapters(path: Optional[Path], decoder: nn.Module) -> bool:
    """Load a checkpoint's adapters into the decoder, or reset them to zero (``path=None``: the base model).

    A decoder without LoRA ignores the call, so generation can call it for every checkpoint.

    Args:
        path (Optional[Path]): an ``epoch_{n}`` directory (or its ``adapter_model.safetensors``).
        decoder (nn.Module): the adapted decoder.

    Returns:
        bool: whether adapters were loaded.

    Raises:
        FileNotFoundError: the model has adapters but the checkpoint holds none.
        ValueError: names, shapes, rank or alpha differ from the model's, naming the file and field.
    """
    lora = lora_of(decoder)
    if lora is None or not adapter_names(decoder):
        return False
    if path is None:
        reset_decoder_adapters(decoder)
        return False
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    weights = directory / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"the model has decoder LoRA adapters but {weights} does not exist")
    config_path = directory / ADAPTER_CONFIG_FILE
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        for field, value in (("r", lora.rank), ("lora_alpha", lora.alpha)):
            if field in config and float(config[field]) != float(value):
                raise ValueError(f"{config_path}: field {field!r} is {config[field]} but the model's decoder_lora has {value}")
    try:
        peft_state = load_file(os.fspath(weights))
    except SafetensorError as error:
        raise ValueError(f"{weights}: not a readable safetensors file ({error})") from error
    state = _peft_to_tune(peft_state, decoder, weights)
    params = dict(decoder.named_parameters())
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(params[k].shape)}" for k, v in state.items() if v.shape != params[k].shape]
    if wrong:
        raise ValueError(f"{weights}: adapter shapes do not fit the model (rank?): {wrong[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    return True


def merged_decoder_state(base_state: Dict[str, torch.Tensor], adapter_dir: Path, decoder: nn.Module) -> Dict[str, torch.Tensor]:
    """Full decoder weights with a checkpoint's adapters merged in: ``W + alpha / r * B A`` (torchtune's
    ``get_merged_lora_ckpt``), in the base's dtype.

    Args:
        base_state (Dict[str, torch.Tensor]): the full-precision base (torchtune format); consumed.
        adapter_dir (Path): an ``epoch_{n}`` directory with ``adapter_model.safetensors``.
        decoder (nn.Module): the run's decoder with its adapters inserted (any device, meta too):
            gives the names, shapes, rank and alpha.

    Returns:
        Dict[str, torch.Tensor]: torchtune-format weights without any ``lora_*`` key.
    """
    from torchtune.modules.peft import get_merged_lora_ckpt

    lora = lora_of(decoder)
    if lora is None:
        raise ValueError("the run's model has no decoder_lora: nothing to merge")
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no adapters to merge: {weights} does not exist")
    adapters = _peft_to_tune(load_file(os.fspath(weights)), decoder, weights)
    dtypes = {k: v.dtype for k, v in base_state.items()}
    state = {k: v.float() for k, v in base_state.items()}
    state.update({k: v.float() for k, v in adapters.items()})
    merged = get_merged_lora_ckpt(state, rank=lora.rank, alpha=lora.alpha)
    return {k: v.to(dtypes[k]) for k, v in merged.items()}
