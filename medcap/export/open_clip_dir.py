"""Write a vision tower as an open_clip model directory (BiomedCLIP's layout) and its trunk as a timm model.

open_clip directory (``open_clip.create_model_from_pretrained("local-dir:DIR")`` loads it)::

    open_clip_config.json          # {"model_cfg": ..., "preprocess_cfg": ..., "medcap": provenance}
    open_clip_model.safetensors    # a whole CLIP state dict: visual.* (the tower) + the text tower

open_clip has no image-only model class, so the text tower must be there. When the source tower came
from a directory (``local-dir:``/``hf-hub:``) whose weights hold a text tower, that text tower and its
``text_cfg`` are kept byte for byte, so the export is the same complete CLIP with a new image tower
(BiomedCLIP in, BiomedCLIP out). Otherwise (``timm:`` towers, vision-only directories) a small seeded,
untrained open_clip text transformer (:data:`PLACEHOLDER_TEXT_CFG`) fills the slot; the provenance
(``medcap.text_tower``) says which, and such an export is an image encoder, not a zero-shot classifier.

timm directory (``timm.create_model("local-dir:DIR/timm", pretrained=True)`` or
``timm.create_model(NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=".../model.safetensors"))``)
is timm's own ``save_for_hf`` output (``config.json`` + ``model.safetensors``) of the tower's trunk,
i.e. without open_clip's projection head.
"""

import copy
import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import open_clip
import torch
from open_clip.timm_model import TimmModel
from safetensors.torch import load_file, save_file

from medcap.models.vision import _WEIGHT_FILES, VisionTower, _resolve_model_dir, open_clip_vision_tower

OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"
TIMM_SUBDIR = "timm"
PLACEHOLDER_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
PLACEHOLDER_SEED = 0
_TOWER_DEFAULTS = {name: p.default for name, p in inspect.signature(open_clip_vision_tower).parameters.items()
                   if p.default is not inspect.Parameter.empty}


def _load_weights(path: Path) -> Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        state_dict = load_file(os.fspath(path))
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return state_dict.get("state_dict", state_dict)


def _source_clip(model_name: str) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, torch.Tensor], str]:
    """(model_cfg, preprocess_cfg, non-visual tensors, description) of the tower's source."""
    if model_name.startswith(("local-dir:", "hf-hub:")):
        model_dir = _resolve_model_dir(model_name)
        with open(model_dir / OPEN_CLIP_CONFIG_FILE) as f:
            config = json.load(f)
        model_cfg = copy.deepcopy(config.get("model_cfg", config))
        weights = next((model_dir / name for name in _WEIGHT_FILES if (model_dir / name).is_file()), None)
        state_dict = _load_weights(weights) if weights is not None else {}
        if any(key.startswith("visual.") for key in state_dict):
            text = {k: v for k, v in state_dict.items() if not k.startswith("visual.")}
        else:
            text = {}
        if text and "text_cfg" in model_cfg:
            return model_cfg, config.get("preprocess_cfg", {}), text, f"kept from {model_name}"
        model_cfg.pop("text_cfg", None)
        model_cfg.pop("custom_text", None)
        return model_cfg, config.get("preprocess_cfg", {}), {}, "placeholder"
    if model_name.startswith("timm:"):
        return {}, {}, {}, "placeholder"
    raise ValueError(f"{model_name}: exporting open_clip-named towers is not supported; "
                     "train from a local-dir:/hf-hub: directory or a timm: tower")


def timm_vision_cfg(tower_args: Dict[str, Any], image_size: int) -> Tuple[int, Dict[str, Any]]:
    """(embed_dim, vision_cfg) of a ``timm:NAME`` tower built by :func:`open_clip_vision_tower`."""
    args = {**_TOWER_DEFAULTS, **tower_args}
    return args["embed_dim"], {
        "timm_model_name": str(args["model_name"])[len("timm:"):], "timm_model_pretrained": False,
        "timm_pool": args["pool"], "timm_proj": args["proj"], "image_size": image_size,
    }


def _placeholder_text_state(model_cfg: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The non-visual tensors of an open_clip CLIP with :data:`PLACEHOLDER_TEXT_CFG` (seeded init)."""
    from open_clip.model import _build_text_tower

    generator_state = torch.get_rng_state()
    torch.manual_seed(PLACEHOLDER_SEED)
    try:
        text = _build_text_tower(model_cfg["embed_dim"], PLACEHOLDER_TEXT_CFG, model_cfg.get("quick_gelu", False))
        logit_scale = torch.ones([]) * torch.log(torch.tensor(1 / 0.07))
    finally:
        torch.set_rng_state(generator_state)
    # open_clip's CLIP class keeps the text tower's parts at its top level (attn_mask is not persistent)
    state = {k: v for k, v in text.state_dict().items() if not k.startswith("attn_mask")}
    state["logit_scale"] = logit_scale
    return state


def open_clip_export_files(
    tower: VisionTower, tower_args: Dict[str, Any], transform_args: Dict[str, Any], provenance: Dict[str, Any]
) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """The ``open_clip_config.json`` content and the CLIP state dict of an exported tower.

    Args:
        tower (VisionTower): the (fine-tuned) tower.
        tower_args (Dict[str, Any]): the arguments the tower was built with (``model_name``, ...).
        transform_args (Dict[str, Any]): the training image transform (``image_size``, ``mean``, ``std``).
        provenance (Dict[str, Any]): stored under the config's ``medcap`` key (open_clip ignores it).

    Returns:
        Tuple[Dict[str, Any], Dict[str, torch.Tensor]]: config and state dict.
    """
    model_name = str(tower_args["model_name"])
    model_cfg, preprocess_cfg, text_state, text_source = _source_clip(model_name)
    if model_name.startswith("timm:"):
        model_cfg["embed_dim"], model_cfg["vision_cfg"] = timm_vision_cfg(tower_args, tower.image_size)
    if text_source == "placeholder":
        model_cfg["text_cfg"] = dict(PLACEHOLDER_TEXT_CFG)
        text_state = _placeholder_text_state(model_cfg)
    if "timm_model_name" in model_cfg["vision_cfg"]:  # the weights are in the file: never fetch timm's
        model_cfg["vision_cfg"] = {**model_cfg["vision_cfg"], "timm_model_pretrained": False}
    image_size = transform_args.get("image_size", tower.image_size)
    preprocess_cfg = {
        **preprocess_cfg, "size": image_size, "interpolation": "bicubic", "resize_mode": "shortest",
        **{key: list(transform_args[key]) for key in ("mean", "std") if key in transform_args},
    }
    if "mean" not in preprocess_cfg:  # medcap's transform defaults to CLIP's statistics
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        preprocess_cfg["mean"], preprocess_cfg["std"] = list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD)
    visual = {f"visual.{k}": v.detach().contiguous().cpu() for k, v in tower.visual.state_dict().items()}
    state_dict = {**visual, **{k: v.contiguous() for k, v in text_state.items()}}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg,
              "medcap": {**provenance, "text_tower": text_source}}
    return config, state_dict


def write_open_clip_dir(directory: Path, config: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> None:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` into ``directory`` (a staging folder)."""
    directory = Path(directory)
    (directory / OPEN_CLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(state_dict, os.fspath(directory / OPEN_CLIP_WEIGHTS_FILE), metadata={"format": "pt"})


def write_timm_dir(directory: Path, tower: VisionTower, mean, std) -> Optional[Dict[str, Any]]:
    """Save the tower's timm trunk with ``timm.models.save_for_hf`` (safetensors); None for non-timm towers.

    Returns:
        Optional[Dict[str, Any]]: ``{"architecture", "num_classes", "global_pool"}`` of the saved trunk.
    """
    if not isinstance(tower.visual, TimmModel):
        return None
    from timm.models import save_for_hf

    trunk = tower.visual.trunk
    image_size = tower.image_size
    save_for_hf(trunk, os.fspath(directory), safe_serialization=True, model_config={"pretrained_cfg": {"tag": "medcap"}},
                data_config={"input_size": (3, image_size, image_size), "mean": tuple(mean), "std": tuple(std),
                             "interpolation": "bicubic", "crop_pct": 1.0})
    pool = getattr(trunk, "global_pool", None)  # a string (ViT) or a SelectAdaptivePool2d (CNN)
    return {"architecture": trunk.pretrained_cfg.get("architecture", type(trunk).__name__),
            "num_classes": trunk.num_classes, "global_pool": pool if isinstance(pool, str) else getattr(pool, "pool_type", None)}


def check_export(directory: Path, tower: VisionTower, atol: float = 1e-5) -> float:
    """Rebuild the exported vision tower with medcap's ``local-dir:`` loader; return the largest feature gap.

    Raises:
        ValueError: when the exported tower's pooled features differ from ``tower``'s by more than ``atol``.
    """
    reloaded = open_clip_vision_tower(f"local-dir:{directory}", output="pooled").eval()
    pooled = VisionTower(tower.visual, output="pooled", image_size=tower.image_size).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, tower.image_size, tower.image_size, generator=generator)  # [2, 3, h, w]
    with torch.no_grad():
        gap = (reloaded(images) - pooled(images)).abs().max().item()
    if gap > atol:
        raise ValueError(f"{directory}: the exported tower's features differ from the run's by {gap:.3g} (> {atol})")
    return gap
