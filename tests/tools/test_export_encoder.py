"""tools/export_encoder.py: a run's tower as an open_clip local-dir model and a timm trunk, loaded by those libraries."""

import json
import shutil
from pathlib import Path

import open_clip
import PIL.Image
import pytest
import timm
import torch
from helpers import REPO_ROOT, load_script, logged_values
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from medcap.checkpoint.io import save_image_encoder
from medcap.data.images import open_clip_image_transform
from medcap.export.run import base_tower, tuned_tower
from medcap.models import ImageEncoder, VisionTower, mlp_projector, open_clip_vision_tower

TINY_CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"
EXPORT_FILES = ["README.md", "open_clip_config.json", "open_clip_model.safetensors", "projector.safetensors",
                "projector_config.json", "timm/config.json", "timm/model.safetensors"]


def _export(checkpoint: Path, output: Path, *extra: str) -> dict:
    tool = load_script("tools/export_encoder.py")
    assert tool.main([str(checkpoint), "--output", str(output), *extra]) == 0
    return json.loads((output / "open_clip_config.json").read_text())


def _image(size: int = 40) -> PIL.Image.Image:
    pixels = torch.Generator().manual_seed(1)
    array = (torch.rand(size, size + 8, 3, generator=pixels) * 255).to(torch.uint8).numpy()  # not square: crop matters
    return PIL.Image.fromarray(array)


@pytest.fixture(scope="module")
def tiny_run(tiny_assets, tmp_path_factory):
    """One real step of the recipe on tiny_cpu.yaml (the tiny local-dir ViT tower, pooled)."""
    output_dir = tmp_path_factory.mktemp("tiny_run")
    recipe_class = load_script("recipes/full_finetune_single_device.py").FullFinetuneRecipeSingleDevice
    cfg = OmegaConf.merge(OmegaConf.load(TINY_CONFIG), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}", "epochs=1", "max_steps_per_epoch=1",
         "optimizer.lr=1e-2", "lr_scheduler=null"]))
    recipe = recipe_class(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()
    return output_dir


def _fake_run(run_dir: Path, tiny_assets, tower_node: dict, seed: int = 3) -> Path:
    """A run directory in the recipe's layout whose epoch_0 tower is the start plus seeded noise ("fine-tuned")."""
    cfg = OmegaConf.merge(OmegaConf.load(TINY_CONFIG), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"output_dir={run_dir}"]))
    cfg.model.vision_tower = {"_component_": "medcap.models.open_clip_vision_tower", **tower_node}
    tower = open_clip_vision_tower(**tower_node)
    cfg.model.projector = {"_component_": "medcap.models.mlp_projector", "in_dim": tower.out_dim, "out_dim": 64}
    cfg.model_transform.image_transform.image_size = tower.image_size
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in tower.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    save_image_encoder(ImageEncoder(tower, mlp_projector(tower.out_dim, 64)), run_dir / "epoch_0")
    return run_dir / "epoch_0"


def _write_biomedclip_layout(directory: Path) -> Path:
    """BiomedCLIP's file layout and model class (timm ViT, CLS pool, linear proj; CustomTextCLIP `text.*`), random weights."""
    config = {
        "model_cfg": {
            "embed_dim": 32, "custom_text": True,
            "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": "linear", "image_size": 32},
            "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(7)
    model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)  # CustomTextCLIP, random init
    assert type(model).__name__ == "CustomTextCLIP"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return directory


def test_tiny_run_export_loads_in_open_clip_with_our_features(tiny_run, tiny_assets, tmp_path):
    config = _export(tiny_run / "epoch_0", tmp_path / "export")
    assert sorted(str(p.relative_to(tmp_path / "export")) for p in (tmp_path / "export").rglob("*") if p.is_file()) == EXPORT_FILES
    assert config["medcap"]["text_tower"] == "placeholder" and config["preprocess_cfg"]["size"] == 32
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'export'}")
    ours, info = tuned_tower(tiny_run / "epoch_0")
    image = _image()
    pixels = open_clip_image_transform(**info.transform_args)(image).unsqueeze(0)  # [1, 3, 32, 32] medcap's preprocessing
    assert torch.equal(preprocess(image).unsqueeze(0), pixels)
    with torch.no_grad():
        theirs = model.eval().encode_image(pixels)  # [1, 32]
        expected = ours(pixels)[:, 0]
        untrained = base_tower(tiny_run)[0](pixels)[:, 0]
    torch.testing.assert_close(theirs, expected, rtol=0, atol=1e-6)
    assert (expected - untrained).abs().max() > 1e-4  # the export carries the trained weights, not the start


def test_biomedclip_layout_keeps_its_text_tower(tiny_assets, tmp_path):
    source = _write_biomedclip_layout(tmp_path / "biomedclip")
    epoch = _fake_run(tmp_path / "run", tiny_assets, {"model_name": f"local-dir:{source}", "output": "patch"})
    config = _export(epoch, tmp_path / "export")
    source_config = json.loads((source / "open_clip_config.json").read_text())
    assert config["model_cfg"] == source_config["model_cfg"] and config["medcap"]["text_tower"] == f"kept from local-dir:{source}"
    exported, original = load_file(tmp_path / "export/open_clip_model.safetensors"), load_file(source / "open_clip_model.safetensors")
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[k], original[k]) for k in original if not k.startswith("visual."))
    assert not torch.equal(exported["visual.head.proj.weight"], original["visual.head.proj.weight"])
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'export'}")
    source_model = open_clip.create_model_from_pretrained(f"local-dir:{source}", return_transform=False)
    ours, _ = tuned_tower(epoch, output="pooled")  # trained as `patch`: the pooled head is what open_clip returns
    pixels = preprocess(_image()).unsqueeze(0)
    tokens = torch.tensor([[1, 5, 9, 2] + [0] * 12])  # [1, 16]
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(pixels), ours(pixels)[:, 0], rtol=0, atol=1e-6)
        torch.testing.assert_close(model.encode_text(tokens), source_model.eval().encode_text(tokens), rtol=0, atol=0)


def test_hf_text_config_is_kept_verbatim(tiny_assets, tmp_path):
    """BiomedCLIP's real text tower is a Hugging Face BERT: its config and tensors are copied, never rebuilt."""
    source = _write_biomedclip_layout(tmp_path / "biomedclip")
    config = json.loads((source / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"] = {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                       "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                       "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}
    (source / "open_clip_config.json").write_text(json.dumps(config))
    epoch = _fake_run(tmp_path / "run", tiny_assets, {"model_name": f"local-dir:{source}"})
    exported = _export(epoch, tmp_path / "export", "--no-timm")
    assert exported["model_cfg"]["text_cfg"] == config["model_cfg"]["text_cfg"]
    assert not (tmp_path / "export/timm").exists()


def test_timm_tower_exports_a_timm_trunk_and_an_open_clip_model(tiny_assets, tmp_path):
    epoch = _fake_run(tmp_path / "run", tiny_assets, {"model_name": "timm:test_resnet", "output": "patch", "image_size": 64})
    config = _export(epoch, tmp_path / "export")
    assert config["model_cfg"]["vision_cfg"] == {"timm_model_name": "test_resnet", "timm_model_pretrained": False,
                                                 "timm_pool": "", "timm_proj": "linear", "image_size": 64}
    ours, _ = tuned_tower(epoch)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # [2, 3, 64, 64]
    weights = tmp_path / "export/timm/model.safetensors"
    by_file = timm.create_model("test_resnet", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(weights)))
    by_dir = timm.create_model(f"local-dir:{tmp_path / 'export/timm'}", pretrained=True)
    model = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path / 'export'}", return_transform=False)
    pooled = VisionTower(ours.visual, output="pooled", image_size=64)
    with torch.no_grad():
        expected = ours.visual.trunk.forward_features(pixels)  # [2, 96, 2, 2]
        torch.testing.assert_close(by_file.eval().forward_features(pixels), expected, rtol=0, atol=0)
        torch.testing.assert_close(by_dir.eval().forward_features(pixels), expected, rtol=0, atol=0)
        torch.testing.assert_close(model.eval().encode_image(pixels), pooled(pixels)[:, 0], rtol=0, atol=1e-6)
    assert list(by_dir.pretrained_cfg["mean"]) == config["preprocess_cfg"]["mean"]


def test_projector_and_model_card_come_from_the_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with open(next((run / "logs").glob("log_*.txt")), "a") as log:
        log.write("Step 2 | loss:9.5 lr:0.01 \n")  # the run went on after epoch_0: not this checkpoint's loss
    _export(run / "epoch_0", tmp_path / "export")
    checkpoint = load_file(tiny_run / "epoch_0/image_encoder.safetensors")
    projector = load_file(tmp_path / "export/projector.safetensors")
    assert sorted(projector) == sorted(k[len("projector."):] for k in checkpoint if k.startswith("projector."))
    assert all(torch.equal(v, checkpoint[f"projector.{k}"]) for k, v in projector.items())
    card = (tmp_path / "export/README.md").read_text()
    cfg = OmegaConf.load(run / "config.yaml")
    assert f"`{cfg.dataset.source}` (8 records)" in card
    assert f"`torchtune.models.llama3.llama3` from `{cfg.checkpointer.checkpoint_dir}`" in card
    assert f"last logged training loss: {logged_values(tiny_run)[-1]:.4f} (step 1)" in card
    assert "placeholder" in card


def test_bad_checkpoint_paths_are_named(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="give an epoch directory"):
        _export(tiny_run, tmp_path / "export")
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        _export(tmp_path, tmp_path / "export")
    assert not (tmp_path / "export").exists()
