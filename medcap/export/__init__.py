"""Exporters of a run's image side: an open_clip ``local-dir:`` model, a timm trunk, the projector, a model card."""

from medcap.export.encoder import export_encoder
from medcap.export.run import base_tower, read_run, tuned_tower

__all__ = ["base_tower", "export_encoder", "read_run", "tuned_tower"]
