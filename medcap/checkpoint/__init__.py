"""Checkpoints of the trainable image side, the optional decoder adapters and the recipe state."""

from medcap.checkpoint.adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, load_decoder_adapters, save_decoder_adapters
from medcap.checkpoint.io import (
    IMAGE_ENCODER_FILE,
    atomic_write,
    load_image_encoder_weights,
    load_recipe_state,
    save_image_encoder,
    save_recipe_state,
)

__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "load_decoder_adapters", "save_decoder_adapters", "IMAGE_ENCODER_FILE", "atomic_write", "load_image_encoder_weights", "load_recipe_state", "save_image_encoder", "save_recipe_state"]
