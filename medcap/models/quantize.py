"""The frozen decoder held in 4 or 8 bits while gradients still flow through it to the image tokens.

``decoder_quantization`` (a :func:`~medcap.models.medcap_model` argument, so it lives in the model
config node and every recipe that builds the model gets it):

- ``nf4``: every ``nn.Linear`` of the decoder layers becomes torchtune's ``FrozenNF4Linear``
  (torchao ``NF4Tensor``: 4-bit NormalFloat, blocks of 64 with double-quantised scalers, QLoRA's
  format). It is what torchtune's QLoRA recipes use: the weight stays a ``Parameter`` (so FSDP2
  shards it and ``LoRALinear(quantize_base=True)`` wraps it), and the matmul dequantises on the fly
  with autograd to the input only.
- ``int8``: every such linear holds a torchao int8 weight-only tensor (``Int8WeightOnlyConfig``:
  int8 rows with one scale each; activations stay in the compute dtype), autograd to the input.

Why these (measured on SmolLM2-135M, ``tests/models/test_quantize.py``, ``bench/quantized_decoder.py``):
bitsandbytes' ``Linear4bit`` holds the same NF4 format (identical error) but is not a torchtune /
FSDP2 ``Parameter`` type that ``LoRALinear`` wraps; bitsandbytes' ``Linear8bitLt`` (LLM.int8) also
quantizes the activations and moved the image-token gradient much more (cosine 0.89-0.93 vs 0.99 for
weight-only int8). Both are available as ``bnb_nf4`` / ``bnb_int8``: on CPU bitsandbytes' NF4 step
is faster (1.25x fp32 against torchao's 2.7x at SmolLM2 size, ``bench/quantized_decoder.py``) at the same
accuracy, so the CPU configs may prefer it; it takes no decoder LoRA and is not sharded by FSDP2.

The token embeddings, the norms and the LM head (``output``) are never quantized, nor anything of the
image side. The weights are quantized while they load (:func:`load_quantized_decoder`): the decoder is
moved to the meta device by :func:`mark_for_quantized_loading` when the model is built, and each
layer's full-precision tensors leave the checkpoint's state dict as soon as they are quantized, so
the full-precision weights exist once at most (the state dict), never twice.
"""

import math
from dataclasses import dataclass
from typing import Dict, MutableMapping, Optional

import torch
from torch import nn

DECODER_QUANTIZATIONS = ("nf4", "int8", "bnb_nf4", "bnb_int8")
QUANTIZATION_ATTR = "medcap_quantization"  # set on a decoder that must be loaded quantized
NF4_BLOCK_SIZE = 64  # torchao / QLoRA defaults
NF4_SCALER_BLOCK_SIZE = 256  # at most: see nf4_block_sizes


@dataclass(frozen=True)
class DecoderQuantization:
    """How a decoder is to be loaded: the method, and where its weights go.

    Attributes:
        method (str): ``nf4`` or ``int8``.
        device (torch.device): the device the decoder was built for (meta: given at load time).
        dtype (torch.dtype): the dtype of its unquantized tensors and of the matmuls.
    """

    method: str
    device: torch.device
    dtype: torch.dtype


class _Int8WeightOnlyMatmul(torch.autograd.Function):
    """``x @ dequant(W).T`` that keeps only the int8 ``W`` for backward (as torchao's ``linear_nf4`` does).

    torchao's own ``F.linear`` on an int8 weight-only tensor dequantizes inside autograd's view, so
    every layer's full-precision weight stays saved for backward: measured at SmolLM2 size, the step
    held +400 MiB (all layer weights in fp32) until this function replaced it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return x @ weight.dequantize().to(x.dtype).t()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad_output @ weight.dequantize().to(grad_output.dtype), None


class FrozenInt8Linear(nn.Linear):
    """A frozen linear layer whose weight is a torchao int8 weight-only tensor (see :func:`quantized_linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Int8WeightOnlyMatmul.apply(x, self.weight)
        return out + self.bias if self.bias is not None else out


def check_quantization(method: Optional[str]) -> Optional[str]:
    """``method`` if it is None or one of :data:`DECODER_QUANTIZATIONS`, else a ValueError."""
    if method is not None and method not in DECODER_QUANTIZATIONS:
        raise ValueError(f"decoder_quantization must be null or one of {DECODER_QUANTIZATIONS}, got {method!r}")
    return method


def mark_for_quantized_loading(decoder: nn.Module, method: str) -> nn.Module:
    """Record that ``decoder`` loads quantized and free its (random) full-precision weights.

    The device and dtype the decoder was built with are remembered; the decoder moves to the meta
    device, so the only full-precision copy that ever exists is the checkpoint's state dict.

    Args:
        decoder (nn.Module): a torchtune ``TransformerDecoder``, just built.
        method (str): ``nf4`` or ``int8``.

    Returns:
        nn.Module: the same decoder, on the meta device, with a ``medcap_quantization`` attribute.
    """
    check_quantization(method)
    weight = decoder.tok_embeddings.weight
    device = weight.device if weight.device.type != "meta" else getattr(decoder, "medcap_build_device", torch.get_default_device())
    setattr(decoder, QUANTIZATION_ATTR, DecoderQuantization(method, torch.device(device), weight.dtype))
    return decoder.to("meta")


def quantization_of(decoder: nn.Module) -> Optional[DecoderQuantization]:
    """The decoder's :class:`DecoderQuantization`, or None for a full-precision decoder."""
    return getattr(decoder, QUANTIZATION_ATTR, None)


def is_quantized_target(name: str, module: nn.Module) -> bool:
    """Whether a decoder submodule is quantized: a plain ``nn.Linear`` inside ``layers``."""
    return type(module) is nn.Linear and name.startswith("layers.")


def quantized_linear(weight: torch.Tensor, bias: Optional[torch.Tensor], method: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A frozen quantized linear layer holding ``weight`` ([out, in], full precision).

    Args:
        weight (torch.Tensor): ``[out, in]`` weights (any float dtype, any device).
        bias (Optional[torch.Tensor]): ``[out]`` or None (kept in ``dtype``).
        method (str): ``nf4`` (torchtune ``FrozenNF4Linear``), ``int8`` (torchao int8 weight-only), or the
            bench's ``bnb_nf4`` / ``bnb_int8`` (bitsandbytes ``Linear4bit`` / ``Linear8bitLt``).
        device (torch.device): where the layer lives.
        dtype (torch.dtype): dtype of the matmul (input and output).

    Returns:
        nn.Module: the layer; its parameters do not require grad.
    """
    out_dim, in_dim = weight.shape
    if method == "nf4":
        from torchao.dtypes.nf4tensor import to_nf4
        from torchtune.modules.low_precision import FrozenNF4Linear

        kwargs = nf4_block_sizes(out_dim, in_dim)
        layer = FrozenNF4Linear(in_dim, out_dim, bias=bias is not None, device="meta", dtype=dtype, **kwargs)  # no random init
        nf4_weight = to_nf4(weight.to(device=device, dtype=dtype), **kwargs)
        layer.weight = nn.Parameter(nf4_weight, requires_grad=False)
    elif method == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        layer = FrozenInt8Linear(in_dim, out_dim, bias=False, device="meta", dtype=dtype)
        layer.weight = nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
        quantize_(layer, Int8WeightOnlyConfig(), filter_fn=lambda module, name: True)  # int8 rows + a scale per row
        layer.weight.requires_grad_(False)
    elif method in ("bnb_nf4", "bnb_int8"):  # bitsandbytes Linear4bit (nf4, no double quantisation) / LLM.int8
        import bitsandbytes as bnb

        if method == "bnb_nf4":
            layer = bnb.nn.Linear4bit(in_dim, out_dim, bias=False, compute_dtype=dtype, quant_type="nf4", device="meta")
            layer.weight = bnb.nn.Params4bit(weight.to(device="cpu", dtype=dtype), requires_grad=False, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(in_dim, out_dim, bias=False, has_fp16_weights=False, threshold=6.0, device="meta")
            layer.weight = bnb.nn.Int8Params(weight.to(device="cpu", dtype=dtype), requires_grad=False, has_fp16_weights=False)
        layer = layer.to(device)  # bitsandbytes quantizes a CPU tensor when it moves to the target device
    else:
        raise ValueError(f"unknown decoder quantization {method!r}; expected one of {DECODER_QUANTIZATIONS}")
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(device=device, dtype=dtype, copy=True), requires_grad=False)
    return layer


def nf4_block_sizes(out_dim: int, in_dim: int) -> Dict[str, int]:
    """torchao ``to_nf4`` block sizes for an ``[out, in]`` weight: 64 weights a block, and as many
    blocks per double-quantisation block as divide the count, up to 256 (QLoRA's 256 for Llama-3
    shapes; SmolLM2's 576 x 576 has 5184 blocks, so 64)."""
    numel = out_dim * in_dim
    if numel % NF4_BLOCK_SIZE:
        raise ValueError(f"nf4 needs a weight size divisible by {NF4_BLOCK_SIZE}, got [{out_dim}, {in_dim}]")
    return {"block_size": NF4_BLOCK_SIZE, "scaler_block_size": math.gcd(NF4_SCALER_BLOCK_SIZE, numel // NF4_BLOCK_SIZE)}


def load_quantized_decoder(
    decoder: nn.Module, state_dict: MutableMapping[str, torch.Tensor], quantization: DecoderQuantization, source: str = "checkpoint"
) -> int:
    """Load ``state_dict`` into ``decoder`` module by module, quantizing the layer linears.

    Entries are popped from ``state_dict`` as they are used, so each full-precision tensor is freed
    once its module holds it (quantized or cast): on return ``state_dict`` is empty. Kept tensors are
    copied into their own storage: a safetensors checkpoint hands out views of one file mapping, and
    keeping the embedding's view kept the whole touched file resident (measured: +300 MiB at SmolLM2 size). Parameters that
    stay full precision (embeddings, norms, LM head) become ``quantization.dtype`` on ``quantization.device``.

    Args:
        decoder (nn.Module): a torchtune ``TransformerDecoder`` (on the meta device or not).
        state_dict (MutableMapping[str, torch.Tensor]): torchtune-format weights; consumed.
        quantization (DecoderQuantization): method, device, dtype.
        source (str): where the weights came from, for error messages.

    Returns:
        int: the number of quantized linear layers.

    Raises:
        ValueError: naming missing, unexpected or wrongly shaped keys.
    """
    device, dtype = quantization.device, quantization.dtype
    if device.type == "meta":
        raise ValueError("the decoder was built on the meta device: give load_frozen_decoder the device to load it to")
    expected = {name: tuple(p.shape) for name, p in decoder.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [f"{k}: {tuple(state_dict[k].shape)} vs {expected[k]}" for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: decoder weights do not fit the model: missing {missing[:3]} ({len(missing)}), "
            f"unexpected {unexpected[:3]} ({len(unexpected)}), wrong shapes {wrong[:3]}"
        )
    replaced = 0
    for name, module in list(decoder.named_modules()):
        prefix = f"{name}." if name else ""
        if is_quantized_target(name, module):
            bias = state_dict.pop(prefix + "bias") if module.bias is not None else None
            quantized = quantized_linear(state_dict.pop(prefix + "weight"), bias, quantization.method, device, dtype)
            parent, _, attribute = name.rpartition(".")
            setattr(decoder.get_submodule(parent), attribute, quantized)
            replaced += 1
            continue
        for param_name, param in list(module._parameters.items()):
            if param is not None and prefix + param_name in state_dict:
                value = state_dict.pop(prefix + param_name).to(device=device, dtype=dtype, copy=True)
                module._parameters[param_name] = nn.Parameter(value, requires_grad=False)
        for buffer_name, buffer in list(module._buffers.items()):
            if buffer is not None and prefix + buffer_name in state_dict:
                module._buffers[buffer_name] = state_dict.pop(prefix + buffer_name).to(device=device, copy=True)
    rebuild_non_persistent_buffers(decoder, device)
    return replaced


def quantized_structure_on_meta(decoder: nn.Module) -> int:
    """For the FSDP2 recipe: swap the layer linears of a meta-device nf4 decoder for meta
    ``FrozenNF4Linear`` modules *before* sharding, so that torchtune's
    ``training.load_from_full_model_state_dict`` quantizes each full tensor into its NF4 shard (as
    torchtune's QLoRA distributed recipe loads). Only ``nf4`` composes with FSDP2 this way.

    Returns:
        int: the number of swapped layers.
    """
    from torchtune.modules.low_precision import FrozenNF4Linear

    quantization = quantization_of(decoder)
    if quantization is None:
        return 0
    if quantization.method != "nf4":
        raise ValueError(f"decoder_quantization={quantization.method!r} is not supported under FSDP2; use nf4")
    swapped = 0
    for name, module in list(decoder.named_modules()):
        if is_quantized_target(name, module):
            kwargs = nf4_block_sizes(module.out_features, module.in_features)
            layer = FrozenNF4Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                    device="meta", dtype=quantization.dtype, **kwargs)
            parent, _, attribute = name.rpartition(".")
            setattr(decoder.get_submodule(parent), attribute, layer)
            swapped += 1
    return swapped


def rebuild_non_persistent_buffers(decoder: nn.Module, device: torch.device) -> None:
    """Rebuild what no checkpoint holds (RoPE caches) on ``device`` after a meta-device build."""
    for module in decoder.modules():
        if hasattr(module, "rope_init"):
            with torch.device(device):
                module.rope_init()
    leftovers = [name for name, t in list(decoder.named_parameters()) + list(decoder.named_buffers()) if t.device.type == "meta"]
    if leftovers:
        raise ValueError(f"decoder tensors left on the meta device after loading: {leftovers[:5]}")


def quantized_weight_bytes(out_dim: int, in_dim: int, method: Optional[str], dtype_bytes: int = 2) -> int:
    """Bytes a frozen ``[out, in]`` linear weight takes when stored as ``method``.

    ``nf4``: 4 bits a weight, an int8 scaler per block of 64, an fp32 factor per 256 scalers and
    torchao's per-tensor scaler mean (fp32) and 16-entry NF4 table (``dtype_bytes``); ``int8``: one
    byte a weight plus a scale (``dtype_bytes``) and an int64 zero point per row; None: ``dtype_bytes`` a weight.

    Args:
        out_dim (int): rows.
        in_dim (int): columns.
        method (Optional[str]): ``nf4``, ``int8`` or None.
        dtype_bytes (int): bytes of the unquantized dtype (2 for bf16, 4 for fp32).

    Returns:
        int: bytes.
    """
    numel = out_dim * in_dim
    if method is None:
        return numel * dtype_bytes
    if method == "int8":
        return numel + out_dim * (dtype_bytes + 8)
    if method == "bnb_nf4":  # packed 4-bit, a uint8 absmax per block of 64, an fp32 absmax per 256 of those (double quant)
        blocks = numel // NF4_BLOCK_SIZE
        return numel // 2 + blocks + math.ceil(blocks / 256) * 4
    if method == "bnb_int8":
        return numel + out_dim * 4  # int8 + an fp32 absmax (SCB) per row
    if method == "nf4":
        blocks = numel // NF4_BLOCK_SIZE
        scaler_block = nf4_block_sizes(out_dim, in_dim)["scaler_block_size"]
        return numel // 2 + blocks + (blocks // scaler_block) * 4 + 4 + 16 * dtype_bytes
    raise ValueError(f"unknown decoder quantization {method!r}")


def decoder_weight_bytes(decoder: nn.Module) -> Dict[str, int]:
    """Bytes of a loaded decoder's weights by storage kind (``nf4``, ``int8``, ``float32``, ``bfloat16`` ...).

    Tied weights count once. NF4 weights count their packed data, scalers and tables.
    """
    counted, totals = set(), {}
    for param in decoder.parameters():
        if id(param) in counted:
            continue
        counted.add(id(param))
        kind, nbytes = _storage_of(param)
        totals[kind] = totals.get(kind, 0) + nbytes
    return totals


def _storage_of(param: torch.Tensor):
    from torchao.dtypes.nf4tensor import NF4Tensor

    if isinstance(param, NF4Tensor):
        inner = (param.quantized_data, param.quantized_scalers, param.quantization_factor, param.scaler_mean, param.nf4)
        return "nf4", sum(t.numel() * t.element_size() for t in inner)
    if hasattr(param, "tensor_impl"):  # torchao AffineQuantizedTensor (int8 weight-only)
        names, _ = param.tensor_impl.__tensor_flatten__()
        return "int8", sum(getattr(param.tensor_impl, n).numel() * getattr(param.tensor_impl, n).element_size() for n in names)
    kind = type(param).__name__
    if kind == "Params4bit":
        state = param.quant_state
        parts = [state.absmax] + ([state.state2.absmax] if state.nested else [])
        return "bnb_nf4", param.numel() * param.element_size() + sum(t.numel() * t.element_size() for t in parts)
    if kind == "Int8Params":
        return "bnb_int8", param.numel() + param.SCB.numel() * param.SCB.element_size()
    return str(param.dtype).replace("torch.", ""), param.numel() * param.element_size()
