"""Every converted real record loads through the training dataset (tokenized, image decoded)."""

import json

import pytest
from helpers import require_dataset

from medcap.data import MedcapTransform, open_clip_image_transform, sharegpt_image_dataset
from medcap.data.converters import convert_slake, convert_vqarad


@pytest.mark.parametrize("dataset,convert,expected", [
    ("vqa_rad", lambda root: convert_vqarad(str(root), ["test"]), 451),
    ("slake", lambda root: convert_slake(str(root), ["test"], lang="en"), 1061),
])
def test_converted_test_split_loads_through_the_training_dataset(tiny_tokenizer, tmp_path, dataset, convert, expected):
    records = convert(require_dataset(dataset))
    path = tmp_path / f"{dataset}_test.json"
    path.write_text(json.dumps(records))
    transform = MedcapTransform(tiny_tokenizer, num_image_tokens=4, max_seq_len=2048,
                                image_transform=open_clip_image_transform(32))
    loaded = sharegpt_image_dataset(transform, str(path), image_check="decode")
    assert len(loaded) == expected and not loaded.skipped
    sample = loaded[len(loaded) - 1]
    assert sample["image"].shape == (3, 32, 32)
    assert sample["tokens"].count(268) == 4  # the image's placeholders
    answer = records[-1]["conversations"][1]["value"].strip()
    labelled = bytes(t for t in sample["labels"] if 0 <= t < 256).decode("utf-8", errors="replace")
    assert answer in labelled
