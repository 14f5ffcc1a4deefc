"""ShareGPTImageDataset end to end: samples, image roots, image checks and errors with their place."""

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from medcap.data import (
    MedcapTransform,
    RecordError,
    ShareGPTImageDataset,
    open_clip_image_transform,
    parse_record,
    sharegpt_image_dataset,
)

IMAGE, EOT, IGNORE = 268, 265, -100
NUM_IMAGE_TOKENS = 4


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def write_gray_png(path, value, size=(6, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("L", size, value).save(path, format="PNG")
    return path


def record(question="Spot?", answer="no", **fields):
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **fields}


def transform(tiny_tokenizer, max_seq_len=128, image_transform=None):
    return MedcapTransform(tiny_tokenizer, NUM_IMAGE_TOKENS, max_seq_len, image_transform=image_transform)


def pixel(sample):
    """The top-left RGB value of an untransformed sample image."""
    return sample["image"].getpixel((0, 0))


# --- samples ------------------------------------------------------------------------------------


def test_tiny_dataset_samples(tiny_assets, tiny_tokenizer):
    dataset = ShareGPTImageDataset(
        str(tiny_assets["data"]), transform(tiny_tokenizer, image_transform=open_clip_image_transform(32))
    )
    assert len(dataset) == 8 and dataset.skipped == []
    assert [r["answer_type"] for r in dataset.records] == ["CLOSED"] * 8  # extra fields are kept
    for index in range(len(dataset)):
        sample = dataset[index]
        answer = "yes" if index % 2 else "no"
        assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
        assert sample["tokens"].count(IMAGE) == NUM_IMAGE_TOKENS
        assert len(sample["tokens"]) == len(sample["labels"])
        trained = [label for label in sample["labels"] if label != IGNORE]
        assert trained == [262, *b"assistant", 263, 10, 10, *answer.encode(), EOT]


def test_sample_lists_are_copies(tiny_assets, tiny_tokenizer):
    dataset = ShareGPTImageDataset(str(tiny_assets["data"]), transform(tiny_tokenizer), image_check="none")
    dataset[0]["tokens"].append(0)
    dataset[0]["labels"].clear()
    assert len(dataset[0]["tokens"]) == len(dataset[0]["labels"]) > 0


def test_builder_matches_class(tiny_assets, tiny_tokenizer):
    model_transform = transform(tiny_tokenizer)
    built = sharegpt_image_dataset(model_transform, str(tiny_assets["data"]), image_check="exists")
    direct = ShareGPTImageDataset(str(tiny_assets["data"]), model_transform, image_check="exists")
    assert [built[i]["tokens"] for i in range(8)] == [direct[i]["tokens"] for i in range(8)]


def test_text_only_record_has_no_image(tmp_path, tiny_tokenizer):
    source = write_json(tmp_path / "data.json", [record("Define CT.", "A scan.")])
    sample = ShareGPTImageDataset(str(source), transform(tiny_tokenizer))[0]
    assert sample["image"] is None and IMAGE not in sample["tokens"]


def test_system_turn_and_multi_turn_record(tmp_path, tiny_tokenizer):
    conversations = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nOrgan?"}, {"from": "gpt", "value": "liver"},
        {"from": "human", "value": "Normal?"}, {"from": "gpt", "value": "no"},
    ]
    write_gray_png(tmp_path / "a.png", 7)
    source = write_json(tmp_path / "data.json", [{"conversations": conversations, "image": "a.png"}])
    sample = ShareGPTImageDataset(str(source), transform(tiny_tokenizer))[0]
    trained = bytes(label for label in sample["labels"] if 0 <= label < 256)
    assert trained == b"assistant\n\nliverassistant\n\nno"
    assert sample["tokens"].count(IMAGE) == NUM_IMAGE_TOKENS and pixel(sample) == (7, 7, 7)


# --- image roots --------------------------------------------------------------------------------


@pytest.fixture
def three_roots(tmp_path):
    """The same relative name under the JSON folder (10), a meta root (20) and an argument root (30)."""
    write_gray_png(tmp_path / "json_dir" / "scan.png", 10)
    write_gray_png(tmp_path / "meta_root" / "scan.png", 20)
    write_gray_png(tmp_path / "arg_root" / "scan.png", 30)
    records = [record(image="scan.png", meta=f"dir={tmp_path / 'meta_root'}"), record(image="scan.png")]
    return tmp_path, write_json(tmp_path / "json_dir" / "data.json", records)


def test_meta_dir_then_json_folder(three_roots, tiny_tokenizer):
    _, source = three_roots
    dataset = ShareGPTImageDataset(str(source), transform(tiny_tokenizer))
    assert pixel(dataset[0]) == (20, 20, 20)  # meta dir=
    assert pixel(dataset[1]) == (10, 10, 10)  # no meta: the JSON file's folder


def test_image_dir_argument_overrides_meta(three_roots, tiny_tokenizer):
    root, source = three_roots
    dataset = ShareGPTImageDataset(str(source), transform(tiny_tokenizer), image_dir=str(root / "arg_root"))
    assert [pixel(dataset[i]) for i in range(2)] == [(30, 30, 30)] * 2


def test_parse_record_resolves_paths(tmp_path):
    source = tmp_path / "sub" / "data.json"
    parsed = parse_record(record(image="a/b.png", meta="dir=/images/root"), source, 0)
    assert parsed.image_path == Path("/images/root/a/b.png")
    assert parse_record(record(image="a/b.png"), source, 0).image_path == (tmp_path / "sub" / "a" / "b.png").resolve()
    with_root = parse_record(record(image="b.png", meta="dir=/images/root"), source, 0, image_dir=tmp_path)
    assert with_root.image_path == (tmp_path / "b.png").resolve()
    assert parse_record(record(), source, 0).image_path is None
    assert parse_record(record(image=""), source, 0).image_path is None


def test_symlink_into_the_hugging_face_blobs_of_its_own_snapshot_is_allowed(tmp_path, tiny_tokenizer):
    # Hugging Face caches hold snapshots of symlinks into the repository's blob folder.
    repo = tmp_path / "datasets--org--scans"
    blob = write_gray_png(repo / "blobs" / "0123abcd", 40)
    snapshot = repo / "snapshots" / "5f1e"
    (snapshot / "images").mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot / "images"), snapshot / "images" / "scan.png")
    source = write_json(snapshot / "data.json", [record(image="images/scan.png")])
    assert pixel(ShareGPTImageDataset(str(source), transform(tiny_tokenizer))[0]) == (40, 40, 40)


def test_symlink_leading_out_of_the_image_root_is_refused(tmp_path, tiny_tokenizer):
    secret = write_gray_png(tmp_path / "elsewhere" / "secret.png", 40)
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    os.symlink(secret, root / "images" / "scan.png")
    (root / "images" / "inside.png").symlink_to(write_gray_png(root / "store" / "a.png", 7))  # inside: fine
    source = write_json(root / "data.json", [record(image="images/inside.png"), record(image="images/scan.png")])
    with pytest.raises(RecordError) as caught:
        ShareGPTImageDataset(str(source), transform(tiny_tokenizer))
    assert (caught.value.index, caught.value.field) == (1, "image")
    assert f"'images/scan.png' is a symlink to {secret}, outside the image directory {root}" in str(caught.value)
    dataset = ShareGPTImageDataset(str(source), transform(tiny_tokenizer), skip_bad_records=True)
    assert len(dataset) == 1 and pixel(dataset[0]) == (7, 7, 7)


def test_bad_meta_names_record_and_field(tmp_path, tiny_tokenizer):
    source = write_json(tmp_path / "data.json", [record(), record(image="a.png", meta="root=/x")])
    with pytest.raises(RecordError, match=r"data\.json: record 1: field 'meta': expected 'dir=/image/root'"):
        ShareGPTImageDataset(str(source), transform(tiny_tokenizer))


# --- image checks -------------------------------------------------------------------------------


def test_image_check_modes(tmp_path, tiny_tokenizer):
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    source = write_json(tmp_path / "data.json", [record(), record(image="garbage.png"), record(image="missing.png")])
    with pytest.raises(RecordError, match=r"record 1: field 'image': cannot decode image"):
        ShareGPTImageDataset(str(source), transform(tiny_tokenizer), image_check="decode")
    with pytest.raises(RecordError, match=r"record 2: field 'image': image not found"):
        ShareGPTImageDataset(str(source), transform(tiny_tokenizer), image_check="exists")
    # "none" checks nothing when building; reading the bad sample still names its record
    dataset = ShareGPTImageDataset(str(source), transform(tiny_tokenizer), image_check="none")
    assert len(dataset) == 3 and dataset[0]["image"] is None
    with pytest.raises(RecordError, match=r"data\.json: record 1: field 'image': cannot decode image"):
        dataset[1]
    with pytest.raises(RecordError, match=r"data\.json: record 2: field 'image': image not found"):
        dataset[2]
    with pytest.raises(ValueError, match="image_check must be"):
        ShareGPTImageDataset(str(source), transform(tiny_tokenizer), image_check="open")


def test_sample_index_maps_to_record_index_after_skips(tmp_path, tiny_tokenizer):
    write_gray_png(tmp_path / "a.png", 5)
    records = [record(answer=""), record(image="a.png")]
    source = write_json(tmp_path / "data.json", records)
    dataset = ShareGPTImageDataset(str(source), transform(tiny_tokenizer), skip_bad_records=True, image_check="none")
    (tmp_path / "a.png").write_bytes(b"broken after the check")
    with pytest.raises(RecordError, match=r"record 1: field 'image'"):  # record 1 in the file, sample 0
        dataset[0]


def test_too_long_record_names_file_record_and_field(tmp_path, tiny_tokenizer):
    records = [record(), record(question="Describe every finding in detail.", answer="a long answer " * 10)]
    source = write_json(tmp_path / "data.json", records)
    with pytest.raises(RecordError) as error:
        ShareGPTImageDataset(str(source), transform(tiny_tokenizer, max_seq_len=64))
    assert (error.value.source, error.value.index, error.value.field) == (source, 1, "conversations")
    assert str(error.value).startswith(f"{source}: record 1: field 'conversations': max_seq_len=64 would cut")


def test_file_without_usable_records(tmp_path, tiny_tokenizer):
    source = write_json(tmp_path / "data.json", [record(answer=" ")])
    with pytest.raises(RecordError, match=r"no usable records \(1 in file, 1 skipped\)"):
        ShareGPTImageDataset(str(source), transform(tiny_tokenizer), skip_bad_records=True)


def test_missing_file(tmp_path, tiny_tokenizer):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        ShareGPTImageDataset(str(tmp_path / "nowhere.json"), transform(tiny_tokenizer))


def test_drawn_pixels_survive_loading(tiny_assets, tiny_tokenizer):
    dataset = ShareGPTImageDataset(str(tiny_assets["data"]), transform(tiny_tokenizer))
    with_spot = np.asarray(dataset[1]["image"])  # odd records have a 230 square at rows 10-20, cols 12-22
    assert with_spot.shape == (40, 40, 3)
    assert (with_spot[10:20, 12:22] == 230).all() and with_spot[:10].max() < 90
