"""The single-device recipe with an nf4 / int8 frozen decoder (tiny config): the loss falls, the decoder
stays bit-identical with no gradient and no optimizer state, checkpoints hold the image side only."""

import pytest
import torch
from helpers import REPO_ROOT, load_script, logged_values
from omegaconf import OmegaConf
from safetensors.torch import load_file

CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"


def _snapshot(decoder):
    """Every stored tensor of the decoder, the packed NF4 / int8 data included."""
    out = {}
    for name, param in decoder.named_parameters():
        if hasattr(param, "quantized_data"):  # NF4Tensor
            for part in ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean"):
                out[f"{name}.{part}"] = getattr(param, part).clone()
        elif hasattr(param, "tensor_impl"):  # torchao int8 weight-only
            for part in ("int_data", "scale", "zero_point"):
                out[f"{name}.{part}"] = getattr(param.tensor_impl, part).clone()
        else:
            out[name] = param.detach().clone()
    return out


def _recipe(tiny_assets, output_dir, method):
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist([
        f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}", f"model.decoder_quantization={method}",
        "epochs=3", "max_steps_per_epoch=4", "lr_scheduler=null", "optimizer.lr=3e-3", "shuffle=False",
    ]))
    recipe = load_script("recipes/full_finetune_single_device.py").FullFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    return recipe


@pytest.fixture(scope="module")
def fp32_losses(tiny_assets, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("fp32")
    recipe = _recipe(tiny_assets, output_dir, "null")
    recipe.train()
    return logged_values(output_dir)


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_training_with_a_quantized_decoder(tiny_assets, tmp_path, method, fp32_losses):
    recipe = _recipe(tiny_assets, tmp_path, method)
    decoder = recipe._model.decoder
    before = _snapshot(decoder)
    recipe.train()
    recipe.cleanup()
    losses = logged_values(tmp_path)
    # the same 4 batches each epoch: the loss falls every step (the tiny random decoder starts near
    # log(vocab) = 5.59) and tracks the fp32 decoder's run
    assert len(losses) == 12 and all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.05, losses
    assert losses == pytest.approx(fp32_losses, abs=0.01 if method == "nf4" else 0.002)
    after = _snapshot(decoder)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in decoder.parameters())
    # optimizer state: exactly AdamW's two moments of the trainable parameters (plus a step scalar each)
    trainable = recipe._trainable_params
    state = recipe._optimizer.state
    assert set(map(id, state)) == set(map(id, trainable))
    moment_bytes = sum(v.numel() * v.element_size() for s in state.values() for k, v in s.items() if k != "step")
    assert moment_bytes == 2 * sum(p.numel() * p.element_size() for p in trainable)
    assert not any(id(p) in set(map(id, state)) for p in decoder.parameters())
    for epoch in range(3):
        names = sorted(p.name for p in (tmp_path / f"epoch_{epoch}").iterdir())
        assert names == ["image_encoder.safetensors", "recipe_state.pt"]
        assert all(k.startswith(("vision_tower.", "projector.")) for k in load_file(tmp_path / f"epoch_{epoch}/image_encoder.safetensors"))
