"""Plan a training run's memory per GPU before renting the GPU: weights, gradients, optimizer state, activations.

Usage::

    python tools/plan_memory.py --config recipes/configs/medcap/llama3_8B_biomedclip_single_device.yaml \\
        model.vision_model=timm:vit_base_patch16_224 model.decoder_quantization=nf4 --gpus 1 --gpu-memory 24GiB

Builds the config's model on the meta device (nothing is allocated or read; a ``hf-hub:`` tower needs
the network, so offline name the same architecture: BiomedCLIP's tower is ``timm:vit_base_patch16_224``
with a 512-d linear head, the builder's default), selects ``trainable`` and prints, per GPU, the
frozen weights by dtype / quantization, the trainable weights, gradients, optimizer state (the
configured optimizer; the other one as an ``(alt)`` row), the activation estimate for ``batch_size``
x ``max_seq_len`` (image tokens included) with and without activation checkpointing, and whether it
fits. The activation model is described in ``medcap/models/memory.py``; ``bench/plan_memory_calibration.py``
checks it against measured peaks. ``--json`` prints the rows as JSON.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from medcap import config as medcap_config  # noqa: E402
from medcap.models import set_trainable  # noqa: E402
from medcap.models.lora import apply_decoder_lora, lora_of  # noqa: E402
from medcap.models.memory import GIB, format_plan, meta_model, parse_bytes, plan_memory  # noqa: E402


def plan_from_config(cfg, gpus: int = 1, gpu_memory: Optional[int] = None, label_fraction: float = 0.25, calibration: float = 1.0):
    """The :class:`~medcap.models.memory.MemoryPlan` of a training config (overrides merged)."""
    model = meta_model(cfg.model, medcap_config.instantiate)
    lora = lora_of(model.decoder)
    if lora is not None:
        apply_decoder_lora(model.decoder, lora)
    names = set_trainable(model, cfg.get("trainable", "encoder_and_projector"), cfg.get("trainable_last_k_blocks", None))
    optimizer = "adamw8bit" if "8bit" in str(cfg.optimizer.get("_component_", "")).lower() else "adamw"
    return plan_memory(
        model, names, dtype=cfg.get("dtype", "bf16"), batch_size=int(cfg.batch_size), seq_len=int(cfg.model_transform.max_seq_len),
        label_fraction=label_fraction, activation_checkpointing=bool(cfg.get("enable_activation_checkpointing", False)),
        optimizer=optimizer, optimizer_in_bwd=bool(cfg.get("optimizer_in_bwd", False)), gpus=gpus, gpu_memory=gpu_memory,
        calibration=calibration,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a training config (recipes/configs/medcap/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, as for tune run")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs (FSDP2 shards, the distributed recipe)")
    parser.add_argument("--gpu-memory", default=None, help="memory of one GPU, e.g. 24GiB")
    parser.add_argument("--label-fraction", type=float, default=0.25, help="share of positions with a label (LM head rows)")
    parser.add_argument("--calibration", type=float, default=1.0, help="factor on the activation estimate")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    cfg = OmegaConf.merge(OmegaConf.load(args.config), OmegaConf.from_dotlist(args.overrides))
    gpu_memory = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    plan = plan_from_config(cfg, gpus=args.gpus, gpu_memory=gpu_memory, label_fraction=args.label_fraction, calibration=args.calibration)
    if args.json:
        print(json.dumps({"rows_gib": {k: round(v / GIB, 3) for k, v in plan.rows.items()}, "total_gib": round(plan.total / GIB, 3),
                          "fits": plan.fits, "notes": plan.notes}, indent=1))
    else:
        title = (f"{args.config} {' '.join(args.overrides)}: per GPU of {args.gpus}, batch {cfg.batch_size} x "
                 f"{cfg.model_transform.max_seq_len} tokens, {cfg.get('dtype', 'bf16')}")
        print(format_plan(plan, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
