"""Decoder adapters through the recipes: PEFT layout each epoch, exact resume, generation, merging."""

import json
import shutil

import pytest
import torch
from helpers import REPO_ROOT, load_script, logged_values
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medcap.checkpoint import load_decoder_adapters

CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"
LORA = ["model.decoder_lora._component_=medcap.models.decoder_lora", "model.decoder_lora.rank=4", "model.decoder_lora.alpha=8",
        "model.decoder_lora.target_modules=[q_proj,k_proj,v_proj,w2]", "trainable=encoder_projector_and_decoder_lora",
        "optimizer.lr=3e-3", "lr_scheduler=null"]


def _run(tiny_assets, output_dir, *overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}", *LORA, *overrides]))
    recipe = load_script("recipes/full_finetune_single_device.py").FullFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()
    return recipe


@pytest.fixture(scope="module")
def fp_run(tiny_assets, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lora_fp")
    return output_dir, _run(tiny_assets, output_dir)


@pytest.fixture(scope="module")
def qlora_run(tiny_assets, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("lora_nf4")
    return output_dir, _run(tiny_assets, output_dir, "model.decoder_quantization=nf4")


def test_each_epoch_saves_adapters_in_peft_layout(fp_run):
    output_dir, recipe = fp_run
    for epoch in (0, 1):
        names = sorted(p.name for p in (output_dir / f"epoch_{epoch}").iterdir())
        assert names == ["adapter_config.json", "adapter_model.safetensors", "image_encoder.safetensors", "recipe_state.pt"]
    weights = load_file(output_dir / "epoch_1/adapter_model.safetensors")
    expected = {f"base_model.model.model.layers.{i}.{module}.lora_{ab}.weight" for i in range(2) for ab in "AB"
                for module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")}
    assert set(weights) == expected
    assert weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    config = json.loads((output_dir / "epoch_1/adapter_config.json").read_text())
    assert {k: config[k] for k in ("r", "lora_alpha", "lora_dropout", "peft_type")} == {"r": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "peft_type": "LORA"}
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "down_proj"]
    # the adapters trained: the saved lora_B differ from the zero initialisation and equal the model's
    decoder = recipe._model.decoder
    assert load_file(output_dir / "epoch_1/image_encoder.safetensors").keys() == recipe._model.image_encoder.state_dict().keys()
    trained = decoder.layers[0].attn.v_proj.lora_b.weight.detach().clone()
    assert trained.abs().sum() > 0
    load_decoder_adapters(None, decoder)  # base: zero
    assert decoder.layers[0].attn.v_proj.lora_b.weight.abs().sum() == 0
    load_decoder_adapters(output_dir / "epoch_1", decoder)  # q/k lora_B go through the rotary permutation and back
    assert torch.equal(decoder.layers[0].attn.v_proj.lora_b.weight, trained)


def test_resume_with_adapters_continues_exactly(tiny_assets, fp_run, tmp_path):
    output_dir, _ = fp_run
    shutil.copytree(output_dir / "epoch_0", tmp_path / "epoch_0")
    _run(tiny_assets, tmp_path, "resume_from_checkpoint=True")
    assert logged_values(tmp_path) == logged_values(output_dir)[2:]
    for name in ("adapter_model.safetensors", "image_encoder.safetensors"):
        resumed, reference = load_file(tmp_path / "epoch_1" / name), load_file(output_dir / "epoch_1" / name)
        assert resumed.keys() == reference.keys()
        for key in reference:
            assert torch.equal(resumed[key], reference[key]), (name, key)


def _batch(tiny_assets, model):
    tokens = torch.randint(0, 200, (2, 14), generator=torch.Generator().manual_seed(3))
    tokens[:, 1:1 + model.num_image_tokens] = model.image_token_id
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    return tokens, images


@pytest.mark.parametrize("run", ["fp_run", "qlora_run"])
def test_generate_with_adapters_equals_the_model_that_trained_them(tiny_assets, run, request, tmp_path):
    output_dir, recipe = request.getfixturevalue(run)
    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "recipes/configs/medcap/generate_tiny_cpu.yaml"), OmegaConf.from_dotlist(
        [f"run_dir={output_dir}", f"output_dir={tmp_path}", f"dataset.source={tiny_assets['data']}"]))
    generation = load_script("recipes/generate.py").GenerationRecipe(cfg)
    generation.setup(cfg)
    generation._load_checkpoint(output_dir / "epoch_1")
    trained, rebuilt = recipe._model.eval(), generation._model.eval()
    tokens, images = _batch(tiny_assets, trained)
    with torch.no_grad():
        expected = trained.lm_head(trained(tokens, images=images))
        torch.testing.assert_close(rebuilt.lm_head(rebuilt(tokens, images=images)), expected, rtol=0, atol=0)
        generation._load_checkpoint(None)  # base: the untrained image side and zero adapters
        assert all(m.lora_b.weight.abs().sum() == 0 for n, m in rebuilt.decoder.named_modules() if n.endswith(("q_proj", "w2")))


def test_merged_weights_give_the_logits_of_base_plus_adapter(tiny_assets, fp_run, tmp_path, capsys):
    output_dir, recipe = fp_run
    merged_dir = tmp_path / "merged"
    tool = load_script("tools/merge_lora.py")
    assert tool.main([str(output_dir / "epoch_1"), "--output", str(merged_dir)]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads(stdout[stdout.index("{"):])
    checkpointer = OmegaConf.load(merged_dir / "checkpointer.yaml")
    assert summary["checkpointer"]["checkpoint_files"] == list(checkpointer.checkpoint_files) and (merged_dir / checkpointer.checkpoint_files[0]).is_file()
    from torchtune.models.llama3 import llama3

    from medcap.checkpoint.decoder import load_frozen_decoder
    from medcap.models.fusion import MedcapModel
    from medcap.utils.tiny import TINY_DECODER

    merged = llama3(**TINY_DECODER)
    load_frozen_decoder(checkpointer, merged)
    assert not [n for n, _ in merged.named_parameters() if "lora" in n]
    adapted = recipe._model.eval()
    plain = MedcapModel(merged, adapted.image_encoder, image_token_id=adapted.image_token_id).eval()
    tokens, images = _batch(tiny_assets, adapted)
    with torch.no_grad():
        torch.testing.assert_close(plain.lm_head(plain(tokens, images=images)), adapted.lm_head(adapted(tokens, images=images)), rtol=1e-5, atol=1e-5)
    with pytest.raises(SystemExit, match="exists and is not empty"):  # never writes over a folder
        tool.main([str(output_dir / "epoch_1"), "--output", str(merged_dir)])


def test_merge_refuses_a_run_without_adapters(tiny_assets, tmp_path):
    from helpers import load_script as load

    run = tmp_path / "run"
    (run / "epoch_0").mkdir(parents=True)
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist([f"assets_dir={tiny_assets['root']}"]))
    OmegaConf.save(cfg, run / "config.yaml")
    with pytest.raises(SystemExit, match="model.decoder_lora is not set"):
        load("tools/merge_lora.py").main([str(run / "epoch_0"), "--output", str(tmp_path / "out")])
