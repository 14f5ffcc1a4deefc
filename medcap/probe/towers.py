"""Name a tower for a probe: a run's start, a run's epoch, or any open_clip/timm tower.

* ``base:RUN_DIR`` - the tower the run started from (:func:`medcap.export.run.base_tower`: the same
  seed and build order as the recipe, so an untrained tower is the run's exact initialisation);
* ``RUN_DIR/epoch_N`` - the fine-tuned tower of that epoch;
* ``local-dir:PATH``, ``hf-hub:ORG/REPO``, ``timm:NAME`` or an open_clip name - built by
  :func:`medcap.models.open_clip_vision_tower` (``image_size`` applies to ``timm:`` and open_clip names).

A run's tower is probed with the run's eval image transform (size, mean, std); other towers with
open_clip's preprocessing at their own size.
"""

from pathlib import Path
from typing import Any, Dict, Tuple

from medcap.export.run import base_tower, tuned_tower
from medcap.models.vision import VisionTower, open_clip_vision_tower

BASE_PREFIX = "base:"
_NAMED_PREFIXES = ("local-dir:", "hf-hub:", "timm:")


def resolve_tower(spec: str, image_size: int = 224) -> Tuple[VisionTower, Dict[str, Any]]:
    """Build the tower ``spec`` names and the image transform arguments to feed it.

    Args:
        spec (str): see the module docstring.
        image_size (int): input side for ``timm:`` towers and open_clip names.

    Returns:
        Tuple[VisionTower, Dict[str, Any]]: the tower (eval mode) and ``open_clip_image_transform`` kwargs.
    """
    if spec.startswith(BASE_PREFIX):
        tower, info = base_tower(Path(spec[len(BASE_PREFIX):]))
        return tower, {"image_size": tower.image_size, **info.transform_args}
    if spec.startswith(_NAMED_PREFIXES) or not Path(spec).exists():
        if "/" in spec and not spec.startswith(_NAMED_PREFIXES):
            raise FileNotFoundError(f"--tower {spec}: no such run directory (towers by name start with local-dir:, hf-hub:, timm:)")
        tower = open_clip_vision_tower(spec, image_size=image_size).eval()
        return tower, {"image_size": tower.image_size}
    tower, info = tuned_tower(Path(spec))
    return tower, {"image_size": tower.image_size, **info.transform_args}
