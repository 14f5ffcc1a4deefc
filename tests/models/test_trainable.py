"""Trainable parameter sets: exact names for each mode; the decoder never trains."""

import pytest
from helpers import build_tiny_model

from medcap.models import set_trainable

PROJECTOR = ["image_encoder.projector.fc1.weight", "image_encoder.projector.fc1.bias",
             "image_encoder.projector.fc2.weight", "image_encoder.projector.fc2.bias"]
TOWER = "image_encoder.vision_tower.visual."


def _block(i):
    return [f"{TOWER}trunk.blocks.{i}.{name}" for name in (
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]


HEAD = [f"{TOWER}trunk.norm.weight", f"{TOWER}trunk.norm.bias", f"{TOWER}head.proj.weight"]


@pytest.fixture(scope="module")
def model(tiny_assets):
    return build_tiny_model(tiny_assets)


def test_projector_only(model):
    assert set_trainable(model, "projector") == PROJECTOR


def test_last_k_blocks(model):
    # test_vit has 6 blocks; K=2 trains blocks 4-5, the final norm, the pooled projection, the projector.
    assert set_trainable(model, "last_k_blocks", last_k_blocks=2) == _block(4) + _block(5) + HEAD + PROJECTOR


def test_encoder_and_projector(model):
    stem = [f"{TOWER}trunk.{n}" for n in ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")]
    expected = stem + [n for i in range(6) for n in _block(i)] + HEAD + PROJECTOR
    assert set_trainable(model, "encoder_and_projector") == expected
    assert not any(p.requires_grad for p in model.decoder.parameters())


@pytest.mark.parametrize("k", [0, 7, None])
def test_last_k_blocks_out_of_range(model, k):
    with pytest.raises(ValueError, match="trainable_last_k_blocks must be in 1..6"):
        set_trainable(model, "last_k_blocks", last_k_blocks=k)


def test_unknown_mode(model):
    with pytest.raises(ValueError, match="trainable must be one of"):
        set_trainable(model, "decoder")
