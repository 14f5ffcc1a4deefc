"""Training pieces used by the recipes: the label-position loss, per-part optimizer groups."""

from medcap.training.loss import LabelPositionCrossEntropy
from medcap.training.param_groups import PARTS, optimizer_param_groups, part_of

__all__ = ["LabelPositionCrossEntropy", "PARTS", "optimizer_param_groups", "part_of"]
