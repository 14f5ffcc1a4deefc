"""tools/linear_probe.py: image-level labels, image-disjoint splits, cached features, the probe and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, load_script, require_dataset
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medcap.data.images import load_image, open_clip_image_transform
from medcap.export.run import base_tower
from medcap.metrics.stats import bootstrap_mean
from medcap.models import open_clip_vision_tower
from medcap.probe.classifier import C_GRID, fit_probe, macro_f1
from medcap.probe.features import extract_features, file_sha256, tower_fingerprint
from medcap.probe.labels import check_image_disjoint, load_task, slake_labels, split_indices, vqarad_labels

TINY_CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"


def _tiny_cfg(tiny_assets, output_dir, *overrides):
    return OmegaConf.merge(OmegaConf.load(TINY_CONFIG), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}", *overrides]))


@pytest.fixture(scope="module")
def tiny_run(tiny_assets, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("probe_run")
    recipe = load_script("recipes/full_finetune_single_device.py").FullFinetuneRecipeSingleDevice
    cfg = _tiny_cfg(tiny_assets, output_dir, "epochs=1", "max_steps_per_epoch=2", "optimizer.lr=1e-2", "lr_scheduler=null")
    run = recipe(cfg)
    run.setup(cfg)
    run.train()
    run.cleanup()
    return output_dir


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    from medcap.data.synthetic import make_synthetic_vqa

    directory = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_vqa(str(directory), num_images=60, seed=0, image_size=32, splits=(0.6, 0.2, 0.2), questions_per_image=1)
    return directory


def test_macro_f1_equals_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.choice(list("abcd"), size=30)
        y_pred = np.where(rng.random(30) < 0.6, y_true, rng.choice(list("abce"), size=30))
        assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)


def test_probe_chooses_c_on_val_and_scores_the_test_split():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 6))
    labels = np.where(features[:, 0] + 0.7 * rng.normal(size=120) > 0, "yes", "no")
    splits = {"train": np.arange(60), "val": np.arange(60, 90), "test": np.arange(90, 120)}
    result = fit_probe(features, labels, splits)
    reference = {}  # scikit-learn directly, one C at a time
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=0))
        reference[c] = (model.fit(features[:60], labels[:60]).predict(features[60:90]) == labels[60:90]).mean() * 100
    assert result.val_accuracy == {str(c): pytest.approx(v) for c, v in reference.items()}
    assert result.c == max(C_GRID, key=lambda c: (reference[c], -c))
    final = make_pipeline(StandardScaler(), LogisticRegression(C=result.c, max_iter=5000, random_state=0)).fit(features[:90], labels[:90])
    assert result.predictions == final.predict(features[90:]).tolist()
    interval = bootstrap_mean(result.hits).scaled(100)
    assert (result.accuracy, result.accuracy_ci_low, result.accuracy_ci_high) == (interval.value, interval.ci_low, interval.ci_high)
    assert result.accuracy > 75 and result.accuracy_ci_low < result.accuracy < result.accuracy_ci_high
    shuffled = fit_probe(features, rng.permutation(labels), splits)  # no signal left
    assert shuffled.accuracy < result.accuracy
    with pytest.raises(ValueError, match="single class"):
        fit_probe(features, np.array(["no"] * 120), splits)


def test_slake_english_split_is_image_disjoint_and_mixed_languages_are_refused():
    slake = require_dataset("slake")
    items = slake_labels(slake, "modality", lang="en")
    assert {s: len(i) for s, i in split_indices(items).items()} == {"train": 450, "val": 96, "test": 96}
    assert sorted({item.label for item in items}) == ["CT", "MRI", "X-Ray"]
    check_image_disjoint(items, [str(item.path) for item in items])
    groups = sorted({item.label for item in slake_labels(slake, "organ_group", lang="en")})
    assert groups == ["Abdomen", "Brain", "Chest", "Lung", "Neck", "Pelvic Cavity"]
    mixed = slake_labels(slake, "location", lang=None)  # Chinese train questions use English test images
    with pytest.raises(ValueError, match="image in two splits"):
        check_image_disjoint(mixed, [str(item.path) for item in mixed])


def test_vqarad_test_images_are_those_of_test_questions():
    items = vqarad_labels(require_dataset("vqa_rad"))
    sizes = {s: len(i) for s, i in split_indices(items).items()}
    assert sizes["test"] == 203 and sizes["train"] + sizes["val"] == 111 and sizes["val"] == 22
    assert sorted({item.label for item in items}) == ["ABD", "CHEST", "HEAD"]
    check_image_disjoint(items, [str(item.path) for item in items])


def test_conflicting_labels_name_the_file_record_and_field(tmp_path):
    record = {"img_name": "a/source.jpg", "modality": "CT", "location": "Lung", "q_lang": "en", "qid": 1}
    (tmp_path / "train.json").write_text(json.dumps([record, {**record, "modality": "MRI", "qid": 2}]))
    for name in ("validate.json", "test.json"):
        (tmp_path / name).write_text("[]")
    with pytest.raises(ValueError, match=r"train.json record 1 \(qid 2\): field 'modality' is 'MRI'"):
        slake_labels(tmp_path, "modality")
    (tmp_path / "train.json").write_text(json.dumps([{**record, "location": ""}]))
    with pytest.raises(ValueError, match=r"record 0 \(qid 1\): field 'location' is missing or empty"):
        slake_labels(tmp_path, "location")


def test_synthetic_labels_follow_params(synthetic_dir):
    params = json.loads((synthetic_dir / "params.json").read_text())["images"]
    counts = load_task("synthetic/lesion_count", synthetic_dir)
    presence = load_task("synthetic/lesion_presence", synthetic_dir)
    assert [item.label for item in counts] == [str(len(params[k]["lesions"])) for k in sorted(params)]
    assert [p.label for p in presence] == ["yes" if c.label != "0" else "no" for c in counts]
    assert {s: len(i) for s, i in split_indices(counts).items()} == {"train": 36, "val": 12, "test": 12}


def test_features_are_cached_by_tower_and_image(tiny_assets, synthetic_dir, tmp_path, monkeypatch):
    tower = open_clip_vision_tower(f"local-dir:{tiny_assets['vision']}").eval()
    paths = sorted((synthetic_dir / "images").glob("*.png"))[:5]
    hashes = [file_sha256(p) for p in paths]
    transform = open_clip_image_transform(32)
    cache = tmp_path / "cache.npz"
    first = extract_features(tower, "pooled", paths, hashes, transform, cache_path=cache)
    with torch.no_grad():
        expected = tower(torch.stack([transform(load_image(p)) for p in paths]))[:, 0]  # [5, 32]
    np.testing.assert_allclose(first, expected.numpy(), rtol=0, atol=1e-6)
    monkeypatch.setattr(type(tower), "forward", lambda *a: pytest.fail("a cached image was recomputed"))
    np.testing.assert_array_equal(extract_features(tower, "pooled", paths, hashes, transform, cache_path=cache), first)
    with np.load(cache, allow_pickle=False) as stored:
        assert sorted(stored["sha256"].tolist()) == sorted(hashes) and stored["features"].shape == (5, 32)
    fingerprint = tower_fingerprint(tower, "pooled", {"image_size": 32})
    assert fingerprint != tower_fingerprint(tower, "mean-patch", {"image_size": 32})
    with torch.no_grad():
        tower.visual.head.proj.weight.add_(1e-3)
    assert tower_fingerprint(tower, "pooled", {"image_size": 32}) != fingerprint


def test_base_of_a_random_tower_is_the_recipes_initialisation(tiny_assets, tmp_path):
    recipe = load_script("recipes/full_finetune_single_device.py").FullFinetuneRecipeSingleDevice
    cfg = _tiny_cfg(tiny_assets, tmp_path, "model.vision_tower.model_name=timm:test_resnet", "model.vision_tower.image_size=32",
                    "model.vision_tower.output=patch", "model.projector.in_dim=96", "seed=5")
    run = recipe(cfg)
    run.setup(cfg)  # writes config.yaml and builds the model exactly as training starts
    started = run._model.image_encoder.vision_tower.state_dict()
    rebuilt = base_tower(tmp_path)[0].state_dict()
    assert sorted(rebuilt) == sorted(started) and all(torch.equal(rebuilt[k], started[k]) for k in started)


def test_tool_base_vs_tuned_on_synthetic(tiny_run, synthetic_dir, tmp_path, capsys):
    tool = load_script("tools/linear_probe.py")
    argv = ["--dataset", "synthetic", "--data-dir", str(synthetic_dir), "--tower", f"base:{tiny_run}",
            "--tower", str(tiny_run / "epoch_0"), "--features", "pooled", "--cache-dir", str(tmp_path / "cache"),
            "--json", str(tmp_path / "probe.json")]
    assert tool.main(argv) == 0
    table = capsys.readouterr().out
    report = json.loads((tmp_path / "probe.json").read_text())
    rows = report["results"]
    assert [(r["task"], r["tower"]) for r in rows] == [
        (task, tower) for task in ("synthetic/modality", "synthetic/lesion_presence", "synthetic/lesion_count")
        for tower in (f"base:{tiny_run}", str(tiny_run / "epoch_0"))]
    assert report["splits"]["synthetic/modality"] == {"train": 36, "val": 12, "test": 12}
    assert rows[0]["fingerprint"] != rows[1]["fingerprint"]  # the trained tower is another tower
    for base, tuned in zip(rows[::2], rows[1::2]):
        assert "vs_first" not in base
        assert tuned["vs_first"]["difference"] == pytest.approx(tuned["accuracy"] - base["accuracy"])
        assert f"| {tuned['task']} | {tuned['tower']} | {tuned['c']:g} | {tuned['accuracy']:.1f} [" in table
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
