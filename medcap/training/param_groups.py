"""Per-part optimizer settings: separate learning rates / weight decay for the tower and the projector.

As ms-swift's ``--vit_lr`` / ``--aligner_lr``: a config's ``optimizer_groups`` maps a part of the
image encoder to the optimizer arguments that differ from the ``optimizer`` node's::

    optimizer_groups:
      vision_tower: {lr: 3e-4, weight_decay: 0.05}
      projector: {lr: 1e-3}

Parts are the image encoder's children (``vision_tower``, ``projector``); parameters of a part not
named use the ``optimizer`` node's settings.
"""

from typing import Any, Dict, List, Mapping, Optional, Sequence

from torch import nn

PARTS = ("vision_tower", "projector")
_PREFIX = "image_encoder."


def part_of(name: str) -> str:
    """``image_encoder.vision_tower.visual.trunk...`` -> ``vision_tower``."""
    if not name.startswith(_PREFIX):
        raise ValueError(f"{name}: only image-encoder parameters train")
    return name[len(_PREFIX):].split(".", 1)[0]


def optimizer_param_groups(
    named_params: Mapping[str, nn.Parameter], trainable_names: Sequence[str], groups: Optional[Mapping[str, Mapping[str, Any]]]
) -> List[Dict[str, Any]]:
    """torch optimizer parameter groups, one per part, in model order, with each part's overrides.

    Args:
        named_params (Mapping[str, nn.Parameter]): the model's named parameters.
        trainable_names (Sequence[str]): the trainable ones, in model order.
        groups (Optional[Mapping[str, Mapping[str, Any]]]): part -> optimizer arguments (``lr``,
            ``weight_decay``, ``betas`` ...); None or empty: one group with the defaults.

    Returns:
        List[Dict[str, Any]]: ``[{"params": [...], "name": part, **overrides}, ...]``.

    Raises:
        ValueError: a part that is not one of :data:`PARTS`, or a named part with nothing to train.
    """
    groups = dict(groups or {})
    unknown = sorted(set(groups) - set(PARTS))
    if unknown:
        raise ValueError(f"optimizer_groups: unknown part(s) {unknown}; parts are {list(PARTS)}")
    by_part: Dict[str, List[nn.Parameter]] = {}
    for name in trainable_names:
        by_part.setdefault(part_of(name), []).append(named_params[name])
    idle = sorted(part for part in groups if part not in by_part)
    if idle:
        raise ValueError(f"optimizer_groups names {idle}, which has no trainable parameter under this `trainable` setting")
    return [{"params": params, "name": part, **dict(groups.get(part, {}))} for part, params in by_part.items()]
