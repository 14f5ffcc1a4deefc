"""bitsandbytes 4-bit surgery on a loaded decoder, so a 70B judge fits on one GPU."""

from typing import Sequence

import torch
from torch import nn


def quantize_linear_4bit(module: nn.Module, compute_dtype: torch.dtype, quant_type: str = "nf4", skip: Sequence[str] = ("output",)) -> int:
    """Replace every ``nn.Linear`` under ``module`` by a bitsandbytes ``Linear4bit`` (in place).

    The weights are quantised when the module is next moved with ``.to(device)`` (CPU or CUDA).
    ``skip`` names child modules left in full precision (by default the LM head ``output``, as
    bitsandbytes' Hugging Face integration does).

    Args:
        module (nn.Module): e.g. a loaded torchtune ``TransformerDecoder``.
        compute_dtype (torch.dtype): dtype of the matmuls (the model's dtype).
        quant_type (str): ``nf4`` or ``fp4``.
        skip (Sequence[str]): qualified names of modules not to quantise.

    Returns:
        int: the number of replaced layers.
    """
    import bitsandbytes as bnb  # optional: only this function needs it

    replaced = 0
    for name, child in list(module.named_modules()):
        if name in skip or not isinstance(child, nn.Linear):
            continue
        quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type=quant_type, device=child.weight.device)
        quantized.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type=quant_type)
        if child.bias is not None:
            quantized.bias = nn.Parameter(child.bias.data, requires_grad=False)
        parent_name, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attribute, quantized)
        replaced += 1
    return replaced
