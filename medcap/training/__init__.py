"""Training pieces used by the recipes: the label-position loss."""

from medcap.training.loss import LabelPositionCrossEntropy

__all__ = ["LabelPositionCrossEntropy"]
