"""A memory plan for training a MedcapModel: weights, gradients, optimizer state and activations per GPU.

The model is built on the meta device (no memory, no weights); the plan counts its parameters and
applies a per-token activation model of the step as medcap runs it:

- Frozen decoder, gradients to the image tokens only: autograd keeps, per layer and token, the fp32
  copies the two RMSNorms make (``2 * 4d`` bytes), SDPA's q, k, v (k/v expanded to all heads, as
  torchtune 0.6.1 does) and output (``4 * h * hd * B``) with its fp32 log-sum-exp (``4h``), and the
  SwiGLU's three ``[ff]`` tensors (``3 * ff * B``); frozen linears keep nothing (their input is only
  needed for a weight gradient). Counted with ``saved_tensors_hooks`` on SmolLM2's layer: 32,300
  bytes per token in fp32, the formula gives 32,292.
- With activation checkpointing each layer keeps its input (``d * B``) and one layer is recomputed
  during backward.
- The LM head runs at labelled positions only: fp32 logits, their log-softmax and its gradient
  (``3 * 4 * V`` bytes per labelled token).
- Backward transients: one layer's activations again plus two ``[T, d]`` gradient buffers.
- A trainable ViT tower: Korthikanti et al. (2022) with flash attention: ``34 * d`` bytes per token
  and layer at 16 bits (``17 * d * B``); a frozen tower keeps nothing; other towers are not modelled.

``calibration`` multiplies the activation estimate; 1.0 reproduced the peaks measured at SmolLM2
size on CPU within 15% (``bench/plan_memory_calibration.py``). Sharding over ``gpus`` follows the
distributed recipe (FSDP2 over the decoder layers and the image side: every parameter, gradient and
optimizer state divided by the GPU count, plus one all-gathered decoder layer); activations are per GPU.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from medcap.models.quantize import is_quantized_target, quantization_of, quantized_weight_bytes

GIB = 1024**3
CUDA_RESERVE_BYTES = int(1.0 * GIB)  # CUDA context, cuBLAS workspace, allocator slack: kept free
_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # as medcap.models.quantize.decoder_weight_bytes names them


def parse_bytes(text: str) -> int:
    """``24GiB`` / ``40GB`` / ``80G`` / a plain number of bytes -> bytes (GB and G read as GiB, as GPUs are sold)."""
    value = text.strip().upper().replace(" ", "")
    for suffix, factor in (("GIB", GIB), ("GB", GIB), ("G", GIB), ("MIB", 2**20), ("MB", 2**20), ("M", 2**20)):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(float(value))


@dataclass
class MemoryPlan:
    """Bytes per GPU, by kind (see the module docstring), and whether they fit."""

    rows: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    gpu_memory: Optional[int] = None

    @property
    def total(self) -> int:
        return sum(v for k, v in self.rows.items() if not k.startswith("(alt)"))

    @property
    def fits(self) -> Optional[bool]:
        return None if self.gpu_memory is None else self.total + CUDA_RESERVE_BYTES <= self.gpu_memory


def _unique_params(module: nn.Module):
    seen = set()
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) not in seen:
            seen.add(id(param))
            yield name, param


def decoder_activation_bytes_per_token(decoder: nn.Module, dtype_bytes: int) -> int:
    """Saved bytes per token and layer of the frozen decoder with gradients to its inputs (no checkpointing)."""
    attn = decoder.layers[0].attn
    d, heads, head_dim = attn.embed_dim, attn.num_heads, attn.head_dim
    ff = decoder.layers[0].mlp.w1.out_features
    return 2 * 4 * d + 4 * heads * head_dim * dtype_bytes + 4 * heads + 3 * ff * dtype_bytes


def plan_memory(
    model: nn.Module,
    trainable_names: List[str],
    *,
    dtype: str,
    batch_size: int,
    seq_len: int,
    num_images: Optional[int] = None,
    label_fraction: float = 0.25,
    activation_checkpointing: bool = False,
    optimizer: str = "adamw",
    optimizer_in_bwd: bool = False,
    gpus: int = 1,
    gpu_memory: Optional[int] = None,
    calibration: float = 1.0,
) -> MemoryPlan:
    """Plan one GPU's memory for a training step.

    Args:
        model (nn.Module): a MedcapModel (meta device is fine), decoder marked as it will load.
        trainable_names (List[str]): what trains (:func:`medcap.models.set_trainable`'s result).
        dtype (str): ``fp32`` or ``bf16``.
        batch_size (int): sequences per GPU and step.
        seq_len (int): tokens per sequence, image tokens included (``max_seq_len``: padded worst case).
        num_images (Optional[int]): images per step (default: one per sequence).
        label_fraction (float): share of positions with a label (the LM head's rows).
        activation_checkpointing (bool): decoder layers checkpointed.
        optimizer (str): ``adamw`` (torch: two states in the parameter dtype) or ``adamw8bit`` (bitsandbytes).
        optimizer_in_bwd (bool): one parameter's gradient alive at a time.
        gpus (int): FSDP2 shards.
        gpu_memory (Optional[int]): bytes of one GPU, for the verdict.
        calibration (float): factor on the activation estimate.

    Returns:
        MemoryPlan: the rows.
    """
    B = _DTYPE_BYTES[dtype]
    decoder = model.decoder
    quantization = quantization_of(decoder)
    method = quantization.method if quantization else None
    trainable = set(trainable_names)
    plan = MemoryPlan(gpu_memory=gpu_memory)
    if gpus > 1 and method == "int8":
        plan.notes.append("int8 (torchao AffineQuantizedTensor) weights under FSDP2 are not tested; nf4 is (torchtune's QLoRA recipes)")

    # frozen decoder weights, by storage
    frozen: Dict[str, int] = {}
    quantized_modules = {f"decoder.{n}": m for n, m in decoder.named_modules() if method and is_quantized_target(n, m)}
    for name, param in _unique_params(model):
        if name in trainable:
            continue
        module_name = name.rsplit(".", 1)[0]
        if module_name in quantized_modules and name.endswith(".weight"):
            m = quantized_modules[module_name]
            kind, nbytes = method, quantized_weight_bytes(m.out_features, m.in_features, method, B)
        else:
            kind, nbytes = _DTYPE_NAMES[dtype], param.numel() * B
        part = "decoder" if name.startswith("decoder.") else "image side"
        frozen[f"frozen {part} weights ({kind})"] = frozen.get(f"frozen {part} weights ({kind})", 0) + nbytes
    for key, value in frozen.items():
        plan.rows[key] = value // gpus
    if gpus > 1:  # FSDP2: one decoder layer all-gathered at a time (two with prefetch)
        layer_bytes = sum(
            quantized_weight_bytes(m.out_features, m.in_features, method, B) if method and is_quantized_target(f"layers.0.{n}", m) else sum(p.numel() * B for p in m.parameters(recurse=False))
            for n, m in decoder.layers[0].named_modules()
        )
        plan.rows["all-gathered decoder layers (FSDP2, x2 prefetch)"] = 2 * layer_bytes

    named = dict(model.named_parameters())
    trainable_numel = sum(named[n].numel() for n in trainable_names)
    plan.rows["trainable weights"] = trainable_numel * B // gpus
    if optimizer_in_bwd:
        plan.rows["gradients (in-backward: largest parameter)"] = max((named[n].numel() for n in trainable_names), default=0) * B // gpus
    else:
        plan.rows["gradients"] = trainable_numel * B // gpus
    adamw = 2 * trainable_numel * B // gpus
    adamw8 = (2 * trainable_numel + 2 * 4 * (trainable_numel // 256 + len(trainable_names))) // gpus
    chosen, other = ("adamw8bit", "adamw") if optimizer == "adamw8bit" else ("adamw", "adamw8bit")
    values = {"adamw": adamw, "adamw8bit": adamw8}
    label = {"adamw": f"optimizer state (AdamW, 2 x {dtype})", "adamw8bit": "optimizer state (AdamW8bit)"}
    plan.rows[label[chosen]] = values[chosen]
    plan.rows["(alt) " + label[other]] = values[other]

    # activations
    tokens = batch_size * seq_len
    layers = len(decoder.layers)
    per_layer_token = decoder_activation_bytes_per_token(decoder, B)
    d = decoder.tok_embeddings.embedding_dim
    vocab = decoder.tok_embeddings.num_embeddings
    if activation_checkpointing:
        saved = layers * tokens * d * B + tokens * per_layer_token  # layer inputs + one recomputed layer
    else:
        saved = layers * tokens * per_layer_token
    head = int(tokens * label_fraction) * 3 * 4 * vocab
    transient = tokens * per_layer_token + 2 * tokens * d * B + tokens * 4 * d  # one layer's backward, grads, final norm
    decoder_activations = saved + max(head, 0) + transient
    tower_activations = 0
    encoder = getattr(model, "image_encoder", None)
    if encoder is not None:
        images = batch_size if num_images is None else num_images
        tower = encoder.vision_tower
        tower_trains = any(n.startswith("image_encoder.vision_tower.") for n in trainable_names)
        trunk = getattr(getattr(tower, "visual", None), "trunk", None)
        if tower_trains and trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
            grid = trunk.patch_embed.grid_size
            vit_tokens = grid[0] * grid[1] + getattr(trunk, "num_prefix_tokens", 1)
            vit_dim = trunk.embed_dim
            tower_activations = len(trunk.blocks) * images * vit_tokens * 17 * vit_dim * B
        elif tower_trains:
            plan.notes.append("the trainable tower is not a ViT: its activations are not modelled (small for a small CNN)")
        tower_activations += images * encoder.num_tokens * d * B * 3  # projector output, its gradient, the scatter
    plan.rows["activations (decoder)" + (", checkpointed" if activation_checkpointing else "")] = int(decoder_activations * calibration)
    plan.rows["activations (image side)"] = int(tower_activations * calibration)
    if not activation_checkpointing:
        alt = layers * tokens * d * B + tokens * per_layer_token + head + transient
        plan.rows["(alt) activations (decoder) with checkpointing"] = int(alt * calibration)
    else:
        plan.rows["(alt) activations (decoder) without checkpointing"] = int((layers * tokens * per_layer_token + head + transient) * calibration)
    return plan


def format_plan(plan: MemoryPlan, title: str) -> str:
    """The plan as an aligned text table (GiB)."""
    lines = [title]
    width = max(len(k) for k in plan.rows) + 2
    for key, value in plan.rows.items():
        lines.append(f"  {key:<{width}}{value / GIB:9.2f} GiB")
    lines.append(f"  {'total (rows without (alt))':<{width}}{plan.total / GIB:9.2f} GiB")
    if plan.gpu_memory is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"  {verdict} in {plan.gpu_memory / GIB:.0f} GiB (keeping {CUDA_RESERVE_BYTES / GIB:.0f} GiB for the CUDA context)")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def meta_model(model_cfg, instantiate) -> nn.Module:
    """Build a model config on the meta device (weights neither allocated nor read)."""
    import warnings

    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        return instantiate(model_cfg)
