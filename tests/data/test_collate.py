"""Collate: right padding with the tokenizer's pad id and -100, images stacked in batch order."""

import torch
from torch.utils.data import DataLoader

from medcap.data import MedcapTransform, ShareGPTImageDataset, open_clip_image_transform, padded_collate_images

PAD, IGNORE, IMAGE = 260, -100, 268


def test_pads_tokens_and_labels_exactly(tiny_tokenizer):
    batch = [
        {"tokens": [256, 268, 268, 104, 265, 257], "labels": [-100, -100, -100, 104, 265, -100], "image": None},
        {"tokens": [256, 72, 265], "labels": [-100, 72, -100], "image": None},
    ]
    collated = padded_collate_images(batch, pad_id=tiny_tokenizer.pad_id)
    assert tiny_tokenizer.pad_id == PAD
    assert collated["tokens"].dtype == collated["labels"].dtype == torch.long
    assert collated["tokens"].tolist() == [[256, 268, 268, 104, 265, 257], [256, 72, 265, 260, 260, 260]]
    assert collated["labels"].tolist() == [[-100, -100, -100, 104, 265, -100], [-100, 72, -100, -100, -100, -100]]
    assert collated["images"] is None


def test_custom_ignore_index_and_equal_lengths():
    batch = [{"tokens": [1, 2], "labels": [1, 2], "image": None}, {"tokens": [3], "labels": [3], "image": None}]
    collated = padded_collate_images(batch, pad_id=0, ignore_idx=-1)
    assert collated["tokens"].tolist() == [[1, 2], [3, 0]]
    assert collated["labels"].tolist() == [[1, 2], [3, -1]]


def test_stacks_only_the_images_present_in_batch_order():
    first, third = torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), 3.0)
    batch = [
        {"tokens": [1], "labels": [1], "image": first},
        {"tokens": [2, 2], "labels": [2, 2], "image": None},
        {"tokens": [3], "labels": [3], "image": third},
        {"tokens": [4], "labels": [4]},  # no "image" key at all
    ]
    images = padded_collate_images(batch, pad_id=PAD)["images"]
    assert images.shape == (2, 3, 4, 4)
    assert images[:, 0, 0, 0].tolist() == [1.0, 3.0]


def test_dataset_through_dataloader(tiny_assets, tiny_tokenizer):
    model_transform = MedcapTransform(tiny_tokenizer, 4, 128, image_transform=open_clip_image_transform(32))
    dataset = ShareGPTImageDataset(str(tiny_assets["data"]), model_transform)
    loader = DataLoader(dataset, batch_size=3, collate_fn=lambda b: padded_collate_images(b, tiny_tokenizer.pad_id))
    batches = list(loader)
    assert [b["tokens"].shape[0] for b in batches] == [3, 3, 2]
    for batch_index, batch in enumerate(batches):
        assert batch["images"].shape == (batch["tokens"].shape[0], 3, 32, 32)
        assert (batch["tokens"] == IMAGE).sum(dim=1).tolist() == [4] * batch["tokens"].shape[0]
        # even records answer "no" (47 tokens), odd ones "yes" (48 tokens)
        lengths = (batch["tokens"] != PAD).sum(dim=1)
        records = range(3 * batch_index, 3 * batch_index + len(lengths))
        assert lengths.tolist() == [48 if index % 2 else 47 for index in records]
        assert batch["tokens"].shape[1] == max(lengths.tolist())
        for row, length in enumerate(lengths.tolist()):
            assert (batch["tokens"][row, length:] == PAD).all() and (batch["labels"][row, length:] == IGNORE).all()
    first = dataset[0]
    assert batches[0]["tokens"][0, : len(first["tokens"])].tolist() == first["tokens"]
    torch.testing.assert_close(batches[0]["images"][0], first["image"])
