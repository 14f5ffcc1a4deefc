"""Vision towers by name: local-dir (BiomedCLIP layout), timm CNNs, pooled and patch outputs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medcap.models import open_clip_vision_tower


def test_local_dir_loads_saved_weights(tiny_assets):
    tower = open_clip_vision_tower(f"local-dir:{tiny_assets['vision']}", output="pooled")
    saved = load_file(tiny_assets["vision"] / "open_clip_model.safetensors")
    ours = tower.visual.state_dict()
    assert set(saved) == {f"visual.{k}" for k in ours}
    for key, value in ours.items():
        torch.testing.assert_close(value, saved[f"visual.{key}"], rtol=0, atol=0)


def test_pooled_and_patch_outputs(tiny_assets):
    images = torch.randn(3, 3, 32, 32)
    pooled = open_clip_vision_tower(f"local-dir:{tiny_assets['vision']}", output="pooled").eval()
    patch = open_clip_vision_tower(f"local-dir:{tiny_assets['vision']}", output="patch").eval()
    assert (pooled.num_tokens, pooled.out_dim) == (1, 32)  # CLS -> linear projection to embed_dim
    assert (patch.num_tokens, patch.out_dim) == (4, 64)  # 32 px / patch 16 = 2 x 2 patches, trunk width 64
    assert pooled(images).shape == (3, 1, 32)
    tokens = patch(images)
    assert tokens.shape == (3, 4, 64)
    # the patch tokens are the trunk's features without the CLS token
    full = patch.visual.trunk.forward_features(images)
    torch.testing.assert_close(tokens, full[:, 1:], rtol=0, atol=0)


def test_cnn_tower_flattens_its_feature_map():
    torch.manual_seed(0)
    tower = open_clip_vision_tower("timm:test_resnet", output="patch", image_size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    feature_map = tower.visual.trunk.forward_features(images)  # [2, c, h, w]
    b, c, h, w = feature_map.shape
    assert tower(images).shape == (2, h * w, c) == (2, tower.num_tokens, tower.out_dim)
    torch.testing.assert_close(tower(images)[:, 0], feature_map[:, :, 0, 0], rtol=0, atol=0)
    assert len(tower.blocks()) >= 2
    pooled = open_clip_vision_tower("timm:test_resnet", output="pooled", image_size=64, embed_dim=24, pool="max")
    assert (pooled.num_tokens, pooled.out_dim) == (1, 24)


def test_missing_directory_and_offline_hub_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json"):
        open_clip_vision_tower(f"local-dir:{tmp_path}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="local-dir:"):
        open_clip_vision_tower("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")


def test_weights_that_do_not_fit_the_config(tiny_assets, tmp_path):
    config = json.loads((tiny_assets["vision"] / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 48  # projection no longer matches the saved head
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    (tmp_path / "open_clip_model.safetensors").write_bytes((tiny_assets["vision"] / "open_clip_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"does not fit the configured vision tower: 1 shape mismatches, e.g. \['head.proj.weight: checkpoint \(32, 64\) vs model \(48, 64\)"):
        open_clip_vision_tower(f"local-dir:{tmp_path}")
