"""Atomic, pickle-free checkpoint I/O for the image side (vision tower + projector).

Layout of a run's ``output_dir``::

    epoch_{n}/image_encoder.safetensors   # every image-encoder weight (tower + projector)
    epoch_{n}/recipe_state.pt             # optimizer, scheduler, RNG, epoch, step (tensors only)

The frozen decoder is never re-saved. Files are written with :func:`medcap.utils.atomic.atomic_write`
(a temporary name, then a rename), so a crash never leaves a half-written checkpoint under the final
name. Loading uses safetensors or ``torch.load(weights_only=True)``: no pickled code runs.
"""

import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medcap.utils.atomic import atomic_write  # re-exported as medcap.checkpoint.atomic_write

IMAGE_ENCODER_FILE = "image_encoder.safetensors"
RECIPE_STATE_FILE = "recipe_state.pt"
_LEGACY_PROJECTOR_KEYS = {"0.": "fc1.", "2.": "fc2."}  # medcap's nn.Sequential(Linear, GELU, Linear)


def save_image_encoder(image_encoder: nn.Module, directory: Path, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save an image encoder's weights as safetensors in ``directory``.

    Returns:
        Path: the written file.
    """
    state_dict = {k: v.detach().contiguous().cpu() for k, v in image_encoder.state_dict().items()}
    path = Path(directory) / IMAGE_ENCODER_FILE
    atomic_write(path, lambda temp: save_file(state_dict, temp, metadata=metadata or {}))
    return path


def save_recipe_state(state: Dict[str, Any], directory: Path) -> Path:
    """Save the recipe state (tensors, numbers, strings, containers only)."""
    path = Path(directory) / RECIPE_STATE_FILE
    atomic_write(path, lambda temp: torch.save(state, temp))
    return path


def load_recipe_state(directory: Path) -> Dict[str, Any]:
    """Load a recipe state saved by :func:`save_recipe_state` (``weights_only``: no code runs)."""
    path = Path(directory) / RECIPE_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no recipe state to resume from: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_image_encoder_weights(path: Path, image_encoder: nn.Module) -> Dict[str, torch.Tensor]:
    """Initialise an image encoder from an earlier run or from medcap's original checkpoint.

    Accepts an ``epoch_{n}`` directory, an ``image_encoder.safetensors`` file, or medcap's
    original ``meta_model_{epoch}.pt`` (``{'visual': ..., 'projector': ...}``, loaded with
    ``weights_only=True``).

    Args:
        path (Path): the checkpoint.
        image_encoder (nn.Module): an :class:`~medcap.models.fusion.ImageEncoder`, loaded in place.

    Returns:
        Dict[str, torch.Tensor]: the state dict that was loaded.

    Raises:
        ValueError: when keys or shapes do not match the encoder, naming the first offenders.
    """
    path = Path(path)
    if path.is_dir():
        path = path / IMAGE_ENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"vision checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(os.fspath(path))
        except SafetensorError as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    else:
        try:
            legacy = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle with code, truncated file, ...
            raise ValueError(f"{path}: cannot load with weights_only=True ({error})") from error
        state_dict = _from_medcap_original(legacy, path)
    check_state_dict_fits(state_dict, image_encoder.state_dict(), path, what="this model's image encoder")
    image_encoder.load_state_dict(state_dict)
    return state_dict


def _from_medcap_original(legacy: Any, path: Path) -> Dict[str, torch.Tensor]:
    if not isinstance(legacy, Mapping) or not {"visual", "projector"} <= set(legacy):
        raise ValueError(f"{path}: expected medcap's {{'visual': ..., 'projector': ...}} checkpoint")
    state_dict = {f"vision_tower.visual.{k}": v for k, v in legacy["visual"].items()}
    for key, value in legacy["projector"].items():
        for old, new in _LEGACY_PROJECTOR_KEYS.items():
            key = re.sub(rf"^{re.escape(old)}", new, key)
        state_dict[f"projector.{key}"] = value
    return state_dict


def check_state_dict_fits(
    loaded: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path: Path, what: str
) -> None:
    """Raise a ValueError naming the first missing, unexpected and wrongly shaped keys."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in loaded and loaded[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} shape mismatches, e.g. {wrong_shape[:3]}")
        if missing:
            problems.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
        raise ValueError(f"{path}: checkpoint does not fit {what}: " + "; ".join(problems))
