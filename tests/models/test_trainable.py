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


def _batchnorm_model(tiny_assets):
    """The tiny decoder with the demo's BatchNorm tower (timm test_resnet, 64 px -> 4 patch tokens)."""
    import torch
    from torchtune.models.convert_weights import meta_to_tune
    from torchtune.models.llama3 import llama3

    from medcap.models import medcap_model, mlp_projector, open_clip_vision_tower
    from medcap.utils.tiny import TINY_DECODER, TINY_VOCAB_SIZE

    torch.manual_seed(0)
    decoder = llama3(**TINY_DECODER)
    decoder.load_state_dict(meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True)))
    tower = open_clip_vision_tower("timm:test_resnet", output="patch", image_size=64)
    return medcap_model(decoder, tower, mlp_projector(tower.out_dim, 64), image_token_id=TINY_VOCAB_SIZE)


def _train_steps(model, mode, last_k_blocks=None, train_mode=None, steps=3):
    """A few optimizer steps on random images; returns the tower's state before and after."""
    import torch

    from medcap.models import set_train_mode

    names = set_trainable(model, mode, last_k_blocks)
    (train_mode or set_train_mode)(model)
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([params[n] for n in names], lr=1e-2)
    before = {k: v.clone() for k, v in model.image_encoder.vision_tower.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    tokens = torch.tensor([[1] + [model.image_token_id] * model.num_image_tokens + [5, 6, 7]] * 2)
    for _ in range(steps):
        images = torch.randn(2, 3, 64, 64, generator=generator)
        model(tokens, images=images).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.image_encoder.vision_tower.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return before, changed


def test_frozen_batchnorm_tower_stays_bit_identical(tiny_assets):
    model = _batchnorm_model(tiny_assets)
    _, changed = _train_steps(model, "projector")
    assert changed == set()  # weights, running statistics and num_batches_tracked untouched
    assert not model.image_encoder.vision_tower.training and not model.decoder.training
    assert model.image_encoder.projector.training


def test_plain_train_mode_would_move_frozen_batchnorm_statistics(tiny_assets):
    """The fault the rule above guards against: model.train() updates frozen BatchNorm buffers."""
    model = _batchnorm_model(tiny_assets)
    _, changed = _train_steps(model, "projector", train_mode=lambda m: (m.train(), m.decoder.eval()))
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)


def test_last_k_blocks_keeps_earlier_blocks_and_their_batchnorms_frozen(tiny_assets):
    model = _batchnorm_model(tiny_assets)
    blocks = model.image_encoder.vision_tower.blocks()
    _, changed = _train_steps(model, "last_k_blocks", last_k_blocks=1)
    last = f"visual.trunk.layer{len(blocks)}."
    assert changed and all(k.startswith(last) or k.startswith("visual.head") for k in changed)
    assert any(k.startswith(last) and k.endswith("running_mean") for k in changed)  # the trained block's BN learns
    assert not blocks[0].training and blocks[-1].training
