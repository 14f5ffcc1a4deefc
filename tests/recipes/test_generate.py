"""recipes/generate.py on the tiny model: every checkpoint, outputs, modes, quick look, bad input."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, load_script
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medcap.metrics import normalize_answer

TRAIN_CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"
GENERATE_CONFIG = REPO_ROOT / "recipes/configs/medcap/generate_tiny_cpu.yaml"


def _load_recipe(name: str):
    return load_script(f"recipes/{name}.py")


@pytest.fixture(scope="module")
def run_dir(tiny_assets, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = OmegaConf.merge(OmegaConf.load(TRAIN_CONFIG), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}", "epochs=2", "max_steps_per_epoch=1"]))
    recipe = _load_recipe("full_finetune_single_device").FullFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()
    return output_dir


def _generation(tiny_assets, run_dir, output_dir, *overrides):
    cfg = OmegaConf.merge(OmegaConf.load(GENERATE_CONFIG), OmegaConf.from_dotlist(
        [f"run_dir={run_dir}", f"output_dir={output_dir}", f"dataset.source={tiny_assets['data']}", *overrides]))
    module = _load_recipe("generate")
    recipe = module.GenerationRecipe(cfg)
    recipe.setup(cfg)
    return recipe


def test_every_checkpoint_scored_in_one_table(tiny_assets, run_dir, tmp_path):
    recipe = _generation(tiny_assets, run_dir, tmp_path, "max_new_tokens=4", f"train_source={tiny_assets['data']}")
    table = recipe.run()
    assert table["checkpoint"].tolist() == ["base", "epoch_0", "epoch_1"]
    assert table["epoch"].tolist()[1:] == [0, 1]
    for name in ("base", "epoch_0", "epoch_1"):
        predictions = pd.read_csv(tmp_path / name / "predictions.csv", keep_default_na=False)
        assert list(predictions.columns[:6]) == ["id", "image", "question", "reference", "answer_type", "question_type"]
        assert len(predictions) == 8 and predictions["reference"].tolist() == ["no", "yes"] * 4
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        hits = [normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions["prediction"], predictions["reference"])]
        assert metrics["n_vqa"] == 8 and metrics["closed_accuracy"] == pytest.approx(100 * sum(hits) / len(hits))
        assert "well_formed" in metrics
    saved = json.loads((tmp_path / "metrics_by_epoch.json").read_text())
    assert [row["checkpoint"] for row in saved] == ["base", "epoch_0", "epoch_1"]
    html = (tmp_path / "report.html").read_text()
    assert "data:image/jpeg;base64" in html and "Is there a spot?" in html


def test_checkpoints_select_and_differ(tiny_assets, run_dir, tmp_path):
    recipe = _generation(tiny_assets, run_dir, tmp_path, "checkpoints=last")
    assert [name for name, _ in recipe._checkpoints] == ["epoch_1"]
    recipe = _generation(tiny_assets, run_dir, tmp_path, "checkpoints=[base,epoch_0]")
    assert [name for name, _ in recipe._checkpoints] == ["base", "epoch_0"]
    with pytest.raises(FileNotFoundError, match="checkpoint 'epoch_7' not found"):
        _generation(tiny_assets, run_dir, tmp_path, "checkpoints=[epoch_7]")
    # each selected checkpoint puts its own weights into the model: image tokens differ from base's
    recipe = _generation(tiny_assets, run_dir, tmp_path, "checkpoints=all")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = {}
    for name, path in recipe._checkpoints:
        recipe._load_checkpoint(path)
        with torch.no_grad():
            tokens[name] = recipe._model.image_encoder(images)
        if path is not None:
            saved = load_file(str(path / "image_encoder.safetensors"))
            assert all(torch.equal(value, saved[key]) for key, value in recipe._model.image_encoder.state_dict().items())
    # (the run's one step of epoch 0 is the warm-up step at lr 0; epoch 1 trained)
    assert not torch.allclose(tokens["base"], tokens["epoch_1"], atol=1e-6)
    recipe._load_checkpoint(None)  # back to base exactly
    with torch.no_grad():
        assert torch.equal(recipe._model.image_encoder(images), tokens["base"])


def _two_image_source(tiny_assets, tmp_path):
    """The 8 tiny records rewritten to use only two image files (4 questions each)."""
    records = json.loads(tiny_assets["data"].read_text())
    images = [records[0]["image"], records[1]["image"]]
    for index, record in enumerate(records):
        record["image"] = images[index % 2]
    source = tmp_path / "two_images.json"
    source.write_text(json.dumps(records))
    return source, f"dataset.image_dir={tiny_assets['data'].parent}"


def test_describe_then_answer_caches_one_description_per_image(tiny_assets, run_dir, tmp_path):
    source, image_dir = _two_image_source(tiny_assets, tmp_path)
    recipe = _generation(tiny_assets, run_dir, tmp_path, "mode=describe_then_answer", "max_new_tokens=3",
                         "checkpoints=last", "meteor=False", f"dataset.source={source}", image_dir)
    encoded = []
    recipe._model.image_encoder.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))
    frame = recipe.run()
    assert sum(encoded) == 2 + 8  # one description per distinct image, then the 8 answers (image + description)
    predictions = pd.read_csv(tmp_path / "epoch_1/predictions.csv", keep_default_na=False)
    assert predictions["image"].nunique() == 2
    assert (predictions.groupby("image")["description"].nunique() == 1).all()
    assert len(frame) == 1


def test_each_distinct_image_is_decoded_once_per_run(tiny_assets, run_dir, tmp_path, monkeypatch):
    from medcap.data import ShareGPTEvalDataset

    loads = []
    real_load = ShareGPTEvalDataset.load_image
    monkeypatch.setattr(ShareGPTEvalDataset, "load_image", lambda self, index: loads.append(index) or real_load(self, index))
    source, image_dir = _two_image_source(tiny_assets, tmp_path)
    recipe = _generation(tiny_assets, run_dir, tmp_path, "max_new_tokens=2", "checkpoints=[base,epoch_0,epoch_1]",
                         f"dataset.source={source}", image_dir)
    recipe.run()
    assert sorted(loads) == [0, 1]  # 2 files for 8 questions x 3 checkpoints


def test_quick_look_prints_base_and_tuned(tiny_assets, run_dir, tmp_path, capsys):
    image = tiny_assets["data"].parent / "images/img_001.png"
    recipe = _generation(tiny_assets, run_dir, tmp_path, "max_new_tokens=3")
    recipe.quick_look(str(image), "Is there a spot?")
    lines = [line for line in capsys.readouterr().out.splitlines() if ":" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["base", "epoch_0", "epoch_1"]


def test_empty_test_file_and_missing_image_are_clear_errors(tiny_assets, run_dir, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    recipe = _generation(tiny_assets, run_dir, tmp_path, f"dataset.source={empty}")
    with pytest.raises(ValueError, match=r"empty.json: field '<file>': no usable records \(0 in file, 0 skipped\)"):
        recipe.run()
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                                    "image": "nope.png"}]))
    recipe = _generation(tiny_assets, run_dir, tmp_path, f"dataset.source={missing}")
    with pytest.raises(ValueError, match=r"missing.json: record 0: field 'image': image not found"):
        recipe.run()


def test_wrong_shape_checkpoint_is_a_clear_error(tiny_assets, run_dir, tmp_path):
    recipe = _generation(tiny_assets, run_dir, tmp_path, "model.projector.num_tokens=8", "checkpoints=[epoch_0]",
                         "max_new_tokens=2")
    with pytest.raises(ValueError, match=r"shape mismatches, e.g. \['projector.fc2.weight"):
        recipe.run()


def test_cli_generate(tiny_assets, run_dir, tmp_path):
    command = [sys.executable, "recipes/generate.py", "--config", "recipes/configs/medcap/generate_tiny_cpu.yaml",
               f"run_dir={run_dir}", f"output_dir={tmp_path}", f"dataset.source={tiny_assets['data']}",
               "checkpoints=last", "max_new_tokens=2"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch_1" in result.stdout and (tmp_path / "epoch_1/predictions.csv").is_file()


def test_token_limits_by_answer_type(tiny_assets, run_dir, tmp_path, monkeypatch):
    module = _load_recipe("generate")
    seen = []
    real_generate = module.generate

    def recording_generate(model, prompts, images, **kwargs):
        seen.append((len(prompts), kwargs["max_new_tokens"]))
        return real_generate(model, prompts, images, **kwargs)

    monkeypatch.setattr(module, "generate", recording_generate)
    records = json.loads(tiny_assets["data"].read_text())
    for index, record in enumerate(records):
        record["answer_type"] = "OPEN" if index % 4 == 0 else "CLOSED"
    source = tmp_path / "mixed.json"
    source.write_text(json.dumps(records))
    cfg = OmegaConf.merge(OmegaConf.load(GENERATE_CONFIG), OmegaConf.from_dotlist(
        [f"run_dir={run_dir}", f"output_dir={tmp_path / 'out'}", f"dataset.source={source}", "checkpoints=last",
         f"dataset.image_dir={tiny_assets['data'].parent}", "max_new_tokens=9", "batch_size=4"]))
    cfg.max_new_tokens_by_answer_type = {"CLOSED": 2, "OPEN": 5}
    recipe = module.GenerationRecipe(cfg)
    recipe.setup(cfg)
    recipe.run()
    assert sorted(seen) == sorted([(4, 2), (2, 2), (2, 5)])  # 6 CLOSED in batches of 4, 2 OPEN


def test_runs_saved_before_the_model_transform_node_still_generate(tiny_assets, run_dir, tmp_path):
    """A run dir whose config.yaml has top-level tokenizer / image_transform / max_seq_len."""
    old_run = tmp_path / "old_run"
    shutil.copytree(run_dir, old_run)
    saved = OmegaConf.load(old_run / "config.yaml")
    transform = saved.pop("model_transform")
    saved.tokenizer, saved.image_transform, saved.max_seq_len = transform.tokenizer, transform.image_transform, transform.max_seq_len
    OmegaConf.save(saved, old_run / "config.yaml")
    old = _generation(tiny_assets, old_run, tmp_path / "old", "checkpoints=last", "max_new_tokens=3").run()
    new = _generation(tiny_assets, run_dir, tmp_path / "new", "checkpoints=last", "max_new_tokens=3").run()
    assert old.drop(columns="samples_per_second").equals(new.drop(columns="samples_per_second"))
    old_rows = pd.read_csv(tmp_path / "old/epoch_1/predictions.csv", keep_default_na=False)
    new_rows = pd.read_csv(tmp_path / "new/epoch_1/predictions.csv", keep_default_na=False)
    assert old_rows["prediction"].tolist() == new_rows["prediction"].tolist()
