"""Optional LoRA adapters on the frozen decoder (torchtune's ``LoRALinear``), on a full-precision or an NF4 base.

medcap's design keeps the decoder frozen; adapters are an option. They are described in the model
config node (``decoder_lora``, built by :func:`decoder_lora`), so generation rebuilds the same model
from a run's ``config.yaml``, and inserted by the decoder loader once the base weights are in place:

    layers.{i}.attn.q_proj: nn.Linear / FrozenNF4Linear ──► LoRALinear(weight = the same frozen base,
                                                                       lora_a [r, in], lora_b [out, r] = 0)

``lora_b`` starts at zero, so a freshly adapted decoder computes exactly the base decoder's function.
Target names are torchtune's: ``q_proj``, ``k_proj``, ``v_proj``, ``output_proj`` (attention) and
``w1``, ``w2``, ``w3`` (SwiGLU MLP). An NF4 base gives QLoRA (``LoRALinear(quantize_base=True)``, as
torchtune's QLoRA builders); an int8 base works too (its matmul keeps a dequantized weight for
backward inside ``LoRALinear``: prefer nf4 for QLoRA); bitsandbytes bases are refused.
"""

import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import nn

from medcap.models.quantize import nf4_block_sizes

LORA_ATTR = "medcap_lora"  # set on a decoder that gets adapters when it is loaded
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "output_proj")
MLP_TARGETS = ("w1", "w2", "w3")
LORA_TARGETS = ATTENTION_TARGETS + MLP_TARGETS
_TARGET_PATH = re.compile(r"^layers\.(\d+)\.(attn|mlp)\.(\w+)$")


@dataclass(frozen=True)
class DecoderLoRA:
    """LoRA settings for the decoder.

    Attributes:
        rank (int): adapter rank ``r``.
        alpha (float): scale numerator (the update is ``alpha / r * B A x``).
        dropout (float): dropout on the adapter's input.
        target_modules (Tuple[str, ...]): which linears of every layer get an adapter.
    """

    rank: int
    alpha: float
    dropout: float
    target_modules: Tuple[str, ...]


def decoder_lora(rank: int = 8, alpha: float = 16.0, dropout: float = 0.0, target_modules: Sequence[str] = ("q_proj", "v_proj")) -> DecoderLoRA:
    """LoRA settings for :func:`~medcap.models.medcap_model`'s ``decoder_lora`` (a config component).

    Args:
        rank (int): adapter rank. Default: 8.
        alpha (float): LoRA alpha. Default: 16.
        dropout (float): adapter input dropout. Default: 0.0.
        target_modules (Sequence[str]): among ``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``,
            ``w1``, ``w2``, ``w3``. Default: ``q_proj``, ``v_proj`` (the LoRA paper's choice).

    Returns:
        DecoderLoRA: the settings.
    """
    targets = tuple(target_modules)
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets:
        raise ValueError(f"decoder_lora.target_modules must be a non-empty subset of {LORA_TARGETS}, got {list(targets)}")
    if int(rank) < 1:
        raise ValueError(f"decoder_lora.rank must be >= 1, got {rank}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"decoder_lora.dropout must be in [0, 1), got {dropout}")
    return DecoderLoRA(int(rank), float(alpha), float(dropout), targets)


def lora_of(decoder: nn.Module):
    """The decoder's :class:`DecoderLoRA`, or None."""
    return getattr(decoder, LORA_ATTR, None)


def apply_decoder_lora(decoder: nn.Module, lora: DecoderLoRA) -> List[str]:
    """Wrap every target linear of the (loaded) decoder in a torchtune ``LoRALinear`` (in place).

    The base weight is the same tensor as before (full precision or NF4, frozen); ``lora_a`` gets
    torchtune's Kaiming-uniform initialisation and ``lora_b`` zeros. Idempotent: a decoder that
    already has its adapters is left alone.

    Args:
        decoder (nn.Module): a torchtune ``TransformerDecoder`` with its weights loaded.
        lora (DecoderLoRA): the settings.

    Returns:
        List[str]: the adapter parameter names, in model order.

    Raises:
        ValueError: when a target is a bitsandbytes int8 layer (no LoRA on that base).
    """
    from torchao.dtypes.nf4tensor import NF4Tensor
    from torchtune.modules.peft import LoRALinear

    for name, module in list(decoder.named_modules()):
        match = _TARGET_PATH.match(name)
        if not match or match.group(3) not in lora.target_modules or isinstance(module, LoRALinear):
            continue
        weight = module.weight
        if not isinstance(module, nn.Linear) or type(weight).__name__ in ("Int8Params", "Params4bit"):
            raise ValueError(f"decoder_lora: {name} is a bitsandbytes {type(module).__name__}; LoRA needs a full-precision, nf4 or int8 base")
        is_nf4 = isinstance(weight, NF4Tensor)  # a Parameter of a tensor subclass keeps the subclass
        nf4_kwargs = nf4_block_sizes(module.out_features, module.in_features) if is_nf4 else {}
        with torch.device("meta"):
            adapted = LoRALinear(
                module.in_features, module.out_features, rank=lora.rank, alpha=lora.alpha,
                dropout=lora.dropout, use_bias=module.bias is not None, quantize_base=is_nf4, **nf4_kwargs,
            )
        adapted.weight = weight  # the frozen base, shared (no copy)
        if module.bias is not None:
            adapted.bias = module.bias
        device = weight.device
        adapted.lora_a.to_empty(device=device)
        adapted.lora_b.to_empty(device=device)
        adapted.lora_a.to(weight.dtype)
        adapted.lora_b.to(weight.dtype)
        adapted.initialize_parameters()
        adapted.training = module.training
        parent, _, attribute = name.rpartition(".")
        setattr(decoder.get_submodule(parent), attribute, adapted)
    return adapter_names(decoder)


def adapter_names(module: nn.Module) -> List[str]:
    """Names of the LoRA parameters under ``module`` (``...lora_a.weight``, ``...lora_b.weight``)."""
    return [name for name, _ in module.named_parameters() if ".lora_a." in f".{name}" or ".lora_b." in f".{name}"]


def reset_decoder_adapters(decoder: nn.Module) -> None:
    """Zero every ``lora_b``: the adapted decoder computes the base decoder's function again."""
    from torchtune.modules.peft import LoRALinear

    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.weight.zero_()
