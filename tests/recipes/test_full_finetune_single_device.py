"""The single-device recipe on the tiny CPU config: golden losses, exact resume, CLI forms, knobs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, load_script, logged_values
from omegaconf import OmegaConf
from safetensors.torch import load_file

CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"
RECIPE = REPO_ROOT / "recipes/full_finetune_single_device.py"
# Losses of the 4 steps (2 epochs x 2 steps) of tiny_cpu.yaml, measured on this CPU with torch 2.14.1.
GOLDEN_LOSSES = [5.537531, 5.670187, 5.584963, 5.512260]


def _recipe_module():
    return load_script("recipes/full_finetune_single_device.py")


def _config(tiny_assets, output_dir: Path, *overrides: str):
    cfg = OmegaConf.load(CONFIG)
    base = [f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}"]
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(base + list(overrides)))


def _run(tiny_assets, output_dir: Path, *overrides: str):
    recipe_class = _recipe_module().FullFinetuneRecipeSingleDevice
    cfg = _config(tiny_assets, output_dir, *overrides)
    recipe = recipe_class(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()
    return recipe


_logged = logged_values


@pytest.fixture(scope="module")
def uninterrupted(tiny_assets, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    _run(tiny_assets, output_dir)
    return output_dir


def test_golden_losses(uninterrupted):
    assert _logged(uninterrupted) == pytest.approx(GOLDEN_LOSSES, rel=1e-5)


def test_checkpoints_hold_only_the_image_encoder(uninterrupted):
    for epoch in (0, 1):
        epoch_dir = uninterrupted / f"epoch_{epoch}"
        assert sorted(p.name for p in epoch_dir.iterdir()) == ["image_encoder.safetensors", "recipe_state.pt"]
        weights = load_file(epoch_dir / "image_encoder.safetensors")
        assert weights and all(k.startswith(("vision_tower.", "projector.")) for k in weights)
    assert not list(uninterrupted.rglob("*.tmp"))
    state = torch.load(uninterrupted / "epoch_1/recipe_state.pt", weights_only=True)
    assert (state["epochs_run"], state["global_step"]) == (2, 4)


def test_resume_continues_exactly(tiny_assets, uninterrupted, tmp_path):
    # a run interrupted during epoch 2: only epoch_0 was saved
    shutil.copytree(uninterrupted / "epoch_0", tmp_path / "epoch_0")
    _run(tiny_assets, tmp_path, "resume_from_checkpoint=True")
    assert _logged(tmp_path) == _logged(uninterrupted)[2:]
    resumed = load_file(tmp_path / "epoch_1/image_encoder.safetensors")
    reference = load_file(uninterrupted / "epoch_1/image_encoder.safetensors")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)


def test_resume_without_checkpoint_is_a_clear_error(tiny_assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no epoch_\\* checkpoint"):
        _run(tiny_assets, tmp_path, "resume_from_checkpoint=True")


def test_gradient_accumulation_matches_a_larger_batch(tiny_assets, tmp_path):
    # 2 micro-batches of 2 accumulate to the same step as one batch of 4 (loss = mean over all tokens)
    _run(tiny_assets, tmp_path / "big", "batch_size=4", "epochs=1", "max_steps_per_epoch=1", "shuffle=False")
    _run(tiny_assets, tmp_path / "acc", "batch_size=2", "gradient_accumulation_steps=2", "epochs=1",
         "max_steps_per_epoch=1", "shuffle=False")
    assert _logged(tmp_path / "acc") == pytest.approx(_logged(tmp_path / "big"), rel=1e-6)
    big = load_file(tmp_path / "big/epoch_0/image_encoder.safetensors")
    accumulated = load_file(tmp_path / "acc/epoch_0/image_encoder.safetensors")
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-5, atol=1e-6, msg=key)


def test_optimizer_in_backward_equals_a_normal_step(tiny_assets, tmp_path):
    common = ["epochs=1", "max_steps_per_epoch=2", "clip_grad_norm=null", "lr_scheduler=null"]
    _run(tiny_assets, tmp_path / "normal", *common)
    _run(tiny_assets, tmp_path / "in_bwd", *common, "optimizer_in_bwd=True")
    assert _logged(tmp_path / "in_bwd") == pytest.approx(_logged(tmp_path / "normal"), rel=1e-5)


def test_projector_only_leaves_the_tower_unchanged(tiny_assets, tmp_path):
    _run(tiny_assets, tmp_path, "trainable=projector", "epochs=1", "max_steps_per_epoch=1")
    trained = load_file(tmp_path / "epoch_0/image_encoder.safetensors")
    initial = load_file(tiny_assets["vision"] / "open_clip_model.safetensors")
    tower_keys = [k for k in trained if k.startswith("vision_tower.visual.")]
    assert tower_keys
    for key in tower_keys:
        torch.testing.assert_close(trained[key], initial[key.replace("vision_tower.", "", 1)], rtol=0, atol=0)


def test_vision_checkpoint_starts_from_an_earlier_stage(tiny_assets, uninterrupted, tmp_path):
    recipe = _recipe_module().FullFinetuneRecipeSingleDevice
    cfg = _config(tiny_assets, tmp_path, f"vision_checkpoint={uninterrupted / 'epoch_1'}")
    staged = recipe(cfg)
    staged.setup(cfg)
    earlier = load_file(uninterrupted / "epoch_1/image_encoder.safetensors")
    for key, value in staged._model.image_encoder.state_dict().items():
        torch.testing.assert_close(value, earlier[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("launcher", ["tune", "python"])
def test_cli_launchers_train_and_write_checkpoints(tiny_assets, tmp_path, launcher):
    overrides = [f"assets_dir={tiny_assets['root']}", f"output_dir={tmp_path}", "epochs=1", "max_steps_per_epoch=1"]
    config = "recipes/configs/medcap/tiny_cpu.yaml"
    if launcher == "tune":
        command = [str(Path(sys.executable).parent / "tune"), "run", "recipes/full_finetune_single_device.py", "--config", config]
    else:
        command = [sys.executable, "recipes/full_finetune_single_device.py", "--config", config]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)} if launcher == "tune" else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command + overrides, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "epoch_0/image_encoder.safetensors").is_file()
    assert _logged(tmp_path) == pytest.approx(GOLDEN_LOSSES[:1], rel=1e-5)
