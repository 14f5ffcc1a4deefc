"""Checkpoints of the trainable image side and of the recipe state."""

from medcap.checkpoint.io import (
    IMAGE_ENCODER_FILE,
    atomic_write,
    load_image_encoder_weights,
    load_recipe_state,
    save_image_encoder,
    save_recipe_state,
)

__all__ = ["IMAGE_ENCODER_FILE", "atomic_write", "load_image_encoder_weights", "load_recipe_state", "save_image_encoder", "save_recipe_state"]
