# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""Tests of the synthetic VQA data set: determinism, labels, pixels, splits, balance, the written
baselines (the baseline rules themselves: tests/metrics/test_baselines.py)."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medcap.data.synthetic import make_synthetic_vqa, organ_mask, save_sample_grid
from medcap.metrics.baselines import compute_baselines

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 64
NUM_IMAGES = 48  # 38 / 5 / 5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "vqa"
    make_synthetic_vqa(str(out), num_images=NUM_IMAGES, seed=5, image_size=IMAGE_SIZE)
    return out


def _load(data_dir, name):
    with open(data_dir / name, encoding="utf-8") as f:
        return json.load(f)


def _all_records(data_dir):
    return [r for split in ("train", "val", "test") for r in _load(data_dir, f"{split}.json")]


def _file_bytes(root: Path):
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# ----------------------------------------------------------------------------------------
# An independent reading of params.json: the answers every record must carry.
# ----------------------------------------------------------------------------------------


def _expected_answers(params, size):
    lesions = params["lesions"]
    middle = (size - 1) / 2
    largest = None
    for lesion in lesions:
        if largest is None or lesion["radius"] > largest["radius"]:
            largest = lesion
    if largest is None:
        size_word, where = "none", "none"
    else:
        fraction = largest["radius"] / size
        size_word = "small" if fraction < 0.06 else ("medium" if fraction < 0.084 else "large")
        x, y = largest["center"]
        where = ("upper " if y < middle else "lower ") + ("left" if x < middle else "right")
    words = {0: "no", 1: "one", 2: "two", 3: "three"}
    count = len(lesions)
    if count == 0:
        report = f"{params['modality']} image showing the organ with no lesions."
    elif count == 1:
        report = (
            f"{params['modality']} image showing the organ with one lesion; "
            f"it is {size_word} and located in the {where}."
        )
    else:
        report = (
            f"{params['modality']} image showing the organ with {words[count]} lesions; "
            f"the largest is {size_word} and located in the {where}."
        )
    yes = {True: "yes", False: "no"}
    return {
        "Is there a lesion?": yes[count > 0],
        "Is there a lesion in the left half of the image?": yes[
            any(lesion["center"][0] < middle for lesion in lesions)
        ],
        "Is there a lesion in the right half of the image?": yes[
            any(lesion["center"][0] > middle for lesion in lesions)
        ],
        "Is this a CT scan?": yes[params["modality"] == "CT"],
        "Is this an MRI scan?": yes[params["modality"] == "MRI"],
        "Is this an X-ray?": yes[params["modality"] == "X-ray"],
        "How many lesions are there?": str(count),
        "Where is the largest lesion?": where,
        "What is the imaging modality?": params["modality"],
        "How large is the largest lesion?": size_word,
        "Describe the image.": report,
    }


def test_same_arguments_give_identical_bytes(tmp_path, data_dir):
    again = tmp_path / "again"
    make_synthetic_vqa(str(again), num_images=NUM_IMAGES, seed=5, image_size=IMAGE_SIZE)
    first, second = _file_bytes(data_dir), _file_bytes(again)
    assert sorted(first) == sorted(second)
    assert first == second
    other = tmp_path / "other_seed"
    make_synthetic_vqa(str(other), num_images=NUM_IMAGES, seed=6, image_size=IMAGE_SIZE)
    assert _file_bytes(other)["images/synth_00000.png"] != first["images/synth_00000.png"]


def test_every_answer_matches_the_drawing_parameters(data_dir):
    params = _load(data_dir, "params.json")
    assert params["image_size"] == IMAGE_SIZE
    records = _all_records(data_dir)
    assert len(records) == NUM_IMAGES * 5  # 4 questions and 1 caption per image
    checked = Counter()
    for record in records:
        image_id = Path(record["image"]).stem
        image_params = params["images"][image_id]
        question = record["conversations"][0]["value"]
        answer = record["conversations"][1]["value"]
        assert answer == _expected_answers(image_params, IMAGE_SIZE)[question], record["id"]
        assert record["modality"] == image_params["modality"]
        assert record["split"] == image_params["split"]
        checked[record["question_type"]] += 1
    assert set(checked) == {
        "presence", "side", "modality", "count", "location", "size", "caption"
    }
    # answer vocabularies stay short and fixed
    open_answers = {
        r["question_type"]: set() for r in records if r["answer_type"] == "OPEN"
    }
    for r in records:
        if r["answer_type"] == "OPEN":
            open_answers[r["question_type"]].add(r["conversations"][1]["value"])
    assert open_answers["count"] <= {"0", "1", "2", "3"}
    assert open_answers["size"] <= {"none", "small", "medium", "large"}
    assert open_answers["modality"] <= {"CT", "MRI", "X-ray"}
    assert open_answers["location"] <= {
        "none", "upper left", "upper right", "lower left", "lower right"
    }


def test_lesion_geometry_is_unambiguous(data_dir):
    params = _load(data_dir, "params.json")
    middle = (IMAGE_SIZE - 1) / 2
    for image_id, image_params in params["images"].items():
        lesions = image_params["lesions"]
        assert 0 <= len(lesions) <= 3
        radii = sorted((lesion["radius"] for lesion in lesions), reverse=True)
        if len(radii) > 1:  # a clear largest lesion
            assert radii[0] >= 1.2 * radii[1], image_id
        for i, lesion in enumerate(lesions):
            x, y = lesion["center"]
            r = lesion["radius"]
            assert 0.045 * IMAGE_SIZE - 1e-6 <= r <= 0.105 * IMAGE_SIZE + 1e-6
            # never on a midline: every lesion lies in exactly one quadrant
            assert abs(x - middle) >= r + 1 and abs(y - middle) >= r + 1, image_id
            assert 0.02 <= lesion["intensity"] <= 0.98
            contrast = lesion["intensity"] - image_params["organ"]["intensity"]
            assert 0.35 - 1e-3 <= abs(contrast) <= 0.48 + 1e-3
            assert (contrast > 0) == (lesion["polarity"] == "bright")
            for other in lesions[i + 1 :]:
                assert math.dist(lesion["center"], other["center"]) >= r + other["radius"] + 3


def _disk_mean(pixels, center, low, high):
    ys, xs = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]]
    distance = np.hypot(xs - center[0], ys - center[1])
    return pixels[(distance >= low) & (distance <= high)].mean()


def test_lesion_pixels_differ_from_the_organ_by_the_drawn_contrast(data_dir):
    params = _load(data_dir, "params.json")
    for image_id, image_params in params["images"].items():
        with Image.open(data_dir / "images" / f"{image_id}.png") as image:
            assert image.mode == "L" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
            pixels = np.asarray(image, dtype=np.float64)  # [h, w] gray levels
        organ_level = image_params["organ"]["intensity"] * 255
        for lesion in image_params["lesions"]:
            r = lesion["radius"]
            inside = _disk_mean(pixels, lesion["center"], 0, 0.6 * r)
            ring = _disk_mean(pixels, lesion["center"], r + 1.0, r + 2.0)
            drawn = (lesion["intensity"] - image_params["organ"]["intensity"]) * 255
            measured = inside - ring
            # the ring around a lesion is organ tissue (the lesion lies inside the organ)
            assert abs(ring - organ_level) < 30, (image_id, ring, organ_level)
            # same sign, about the drawn contrast (MRI bias field scales it by up to 16%)
            assert np.sign(measured) == np.sign(drawn), image_id
            assert 0.75 * abs(drawn) <= abs(measured) <= 1.25 * abs(drawn), (image_id, measured)
            assert abs(measured) >= 70  # clearly visible


def test_organ_without_lesions_has_no_lesion_like_spot(data_dir):
    params = _load(data_dir, "params.json")
    for image_id, image_params in params["images"].items():
        with Image.open(data_dir / "images" / f"{image_id}.png") as image:
            pixels = np.asarray(image, dtype=np.float64)  # [h, w]
        mask = organ_mask(image_params["organ"], IMAGE_SIZE)
        ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
        for lesion in image_params["lesions"]:
            distance = np.hypot(xs - lesion["center"][0], ys - lesion["center"][1])
            mask &= distance > lesion["radius"] + 3
        # 3x3 box mean, then stay 2 pixels away from the organ border
        padded = np.pad(pixels, 1, mode="edge")
        smooth = sum(
            padded[1 + dy : 1 + dy + IMAGE_SIZE, 1 + dx : 1 + dx + IMAGE_SIZE]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ) / 9
        interior = mask.copy()
        for shift in ((0, 2), (0, -2), (2, 0), (-2, 0)):
            interior &= np.roll(mask, shift, axis=(0, 1))
        deviation = np.abs(smooth[interior] - image_params["organ"]["intensity"] * 255)
        assert deviation.max() < 0.35 * 255 / 2, image_id  # below half the smallest contrast


def test_splits_are_disjoint_and_complete(data_dir):
    params = _load(data_dir, "params.json")
    images_by_split = {}
    for split in ("train", "val", "test"):
        records = _load(data_dir, f"{split}.json")
        assert all(r["split"] == split and "meta" not in r for r in records)
        images_by_split[split] = {r["image"] for r in records}
    assert [len(images_by_split[s]) for s in ("train", "val", "test")] == [38, 5, 5]
    assert not images_by_split["train"] & images_by_split["val"]
    assert not images_by_split["train"] & images_by_split["test"]
    assert not images_by_split["val"] & images_by_split["test"]
    all_images = set().union(*images_by_split.values())
    assert all_images == {f"images/{image_id}.png" for image_id in params["images"]}
    assert all((data_dir / image).is_file() for image in all_images)
    ids = [r["id"] for r in _all_records(data_dir)]
    assert len(ids) == len(set(ids))


def test_yes_and_no_are_balanced_per_closed_question_type(tmp_path):
    out = tmp_path / "balance"
    summary = make_synthetic_vqa(str(out), num_images=300, seed=2, image_size=IMAGE_SIZE)
    for split in ("train", "val", "test"):
        records = _load(out, f"{split}.json")
        answers = {}
        for r in records:
            if r["answer_type"] == "CLOSED":
                answer = r["conversations"][1]["value"]
                answers.setdefault(r["question_type"], Counter())[answer] += 1
        assert set(answers) == {"presence", "side", "modality"}
        for question_type, counts in answers.items():
            assert set(counts) <= {"yes", "no"}
            assert abs(counts["yes"] - counts["no"]) <= 1, (split, question_type, counts)
        # lesion counts follow the 0,1,0,2,0,3 pattern inside each split
        presence = [r for r in records if r["question_type"] == "presence"]
        assert summary["images"][split] == len(presence)
    params = _load(out, "params.json")["images"]
    train_counts = Counter(len(p["lesions"]) for p in params.values() if p["split"] == "train")
    assert train_counts == {0: 120, 1: 40, 2: 40, 3: 40}
    train_modalities = Counter(p["modality"] for p in params.values() if p["split"] == "train")
    assert train_modalities == {"CT": 80, "MRI": 80, "X-ray": 80}


def test_baselines_file_matches_a_recomputation(data_dir):
    saved = _load(data_dir, "baselines.json")
    recomputed = compute_baselines(_load(data_dir, "train.json"), _load(data_dir, "test.json"))
    assert saved == json.loads(json.dumps(recomputed))
    # presence is 50/50 by construction, so the majority answer cannot beat chance there
    presence = saved["majority"]["by_question_type"]["CLOSED/presence"]
    assert presence["count"] == 5 and presence["accuracy"] in (0.4, 0.6)


def test_existing_output_is_reused_replaced_or_protected(tmp_path):
    out = tmp_path / "vqa"
    first = make_synthetic_vqa(str(out), num_images=6, seed=1)
    stamp = (out / "train.json").stat().st_mtime_ns
    (out / "marker").write_text("kept while the arguments are the same")
    assert make_synthetic_vqa(str(out), num_images=6, seed=1) == first
    assert (out / "marker").exists() and (out / "train.json").stat().st_mtime_ns == stamp
    # other arguments: the whole directory is replaced
    second = make_synthetic_vqa(str(out), num_images=12, seed=1)
    assert second["images"] == {"train": 10, "val": 1, "test": 1}
    assert not (out / "marker").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqa"]  # no temp dirs left
    # a foreign non-empty directory is never overwritten
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="foreign"):
        make_synthetic_vqa(str(foreign), num_images=6)
    with pytest.raises(ValueError, match="splits"):
        make_synthetic_vqa(str(tmp_path / "bad"), num_images=6, splits=(0.5, 0.2, 0.2))


def test_sample_grid(tmp_path, data_dir):
    grid = tmp_path / "grid.png"
    save_sample_grid(str(data_dir), str(grid), rows=2, cols=3, tile_size=64)
    with Image.open(grid) as image:
        assert image.size == (3 * 64, 2 * (64 + 14))


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "cli_out"
    grid = tmp_path / "grid.png"
    command = [
        sys.executable,
        str(REPO_ROOT / "tools" / "make_synthetic_vqa.py"),
        "--output", str(out),
        "--num-images", "12",
        "--seed", "3",
        "--image-size", "48",
        "--questions-per-image", "2",
        "--no-captions",
        "--sample-grid", str(grid),
    ]
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["images"] == {"train": 10, "val": 1, "test": 1}
    assert summary["records"] == {"train": 20, "val": 2, "test": 2}
    train = _load(out, "train.json")
    assert {r["answer_type"] for r in train} <= {"CLOSED", "OPEN"}  # no captions
    with Image.open(out / train[0]["image"]) as image:
        assert image.size == (48, 48)
    assert grid.is_file()
    manifest = _load(out, "manifest.json")
    assert manifest["arguments"]["image_size"] == 48 and manifest["summary"] == summary
