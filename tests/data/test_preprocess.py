"""Offline image preprocessing: pixel-equal to torchvision, padding, idempotent directory runs."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image, ImageOps
from torchvision import transforms

from helpers import REPO_ROOT
from medcap.data.preprocess import pad_to_square, preprocess_directory, preprocess_image


def random_image(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("width,height", [(300, 200), (200, 300), (225, 224), (641, 480), (224, 224), (100, 150)])
def test_matches_torchvision_resize_and_center_crop(width, height):
    image = random_image(width, height)
    reference = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
    ])(image)
    assert np.array_equal(np.asarray(preprocess_image(image)), np.asarray(reference))


@pytest.mark.parametrize("width,height", [(401, 100), (100, 400), (181, 100)])
def test_elongated_images_are_padded_to_a_centred_black_square(width, height):
    image = random_image(width, height, seed=1)
    side = max(width, height)
    expected = ImageOps.pad(image, (side, side), color=(0, 0, 0), centering=(0.5, 0.5))
    assert np.array_equal(np.asarray(pad_to_square(image)), np.asarray(expected))
    output = np.asarray(preprocess_image(image))
    assert output.shape == (224, 224, 3)
    assert output[0, 0].tolist() == [0, 0, 0]  # a corner lies in the padding


def test_aspect_ratio_at_the_limit_is_not_padded():
    image = random_image(180, 100)  # exactly 1.8
    assert pad_to_square(image) is image


def test_directory_run_mirrors_paths_and_is_idempotent(tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    (source / "a" / "b").mkdir(parents=True)
    random_image(300, 200).save(source / "top.jpg")
    random_image(200, 500, seed=2).save(source / "a" / "b" / "deep.png")
    (source / "notes.txt").write_text("not an image")
    (source / "a" / "broken.jpg").write_bytes(b"garbage")

    first = preprocess_directory(str(source), str(target), num_workers=2, progress=False)
    assert (first.written, first.skipped) == (2, 0)
    assert [os.path.relpath(path, source) for path, _ in first.failed] == [os.path.join("a", "broken.jpg")]
    assert Image.open(target / "a" / "b" / "deep.png").size == (224, 224)
    assert Image.open(target / "top.jpg").format == "JPEG"
    assert sorted(os.listdir(target)) == ["a", "top.jpg"]  # no temp files, no text file

    second = preprocess_directory(str(source), str(target), num_workers=1, progress=False)
    assert (second.written, second.skipped) == (0, 2)

    newer = os.path.getmtime(target / "top.jpg") + 10
    os.utime(source / "top.jpg", (newer, newer))          # input changed after the output
    Image.new("RGB", (50, 50)).save(target / "a" / "b" / "deep.png")  # output of the wrong size
    third = preprocess_directory(str(source), str(target), num_workers=1, progress=False)
    assert (third.written, third.skipped) == (2, 0)


def test_command_line_exit_status(tmp_path):
    spec = importlib.util.spec_from_file_location("preprocess_images", REPO_ROOT / "tools" / "preprocess_images.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "in").mkdir()
    random_image(64, 64).save(tmp_path / "in" / "x.png")
    arguments = ["--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--quiet",
                 "--workers", "1"]
    assert tool.main(arguments + ["--size", "32"]) == 0
    assert Image.open(tmp_path / "out" / "x.png").size == (32, 32)
    (tmp_path / "in" / "bad.png").write_bytes(b"garbage")
    assert tool.main(arguments + ["--size", "32"]) == 1
    assert tool.main(["--input-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o"), "--quiet"]) == 2
