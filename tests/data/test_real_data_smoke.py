"""Real VQA-RAD records through the dataset, collate and one forward of a tiny model.

Skips when the shared data is absent (``$MEDCAP_DATA`` or ``../shared/data``).
"""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import build_tiny_model, require_dataset
from medcap.data import MedcapTransform, ShareGPTImageDataset, open_clip_image_transform, padded_collate_images
from medcap.training.loss import LabelPositionCrossEntropy

NUM_RECORDS, NUM_IMAGE_TOKENS, BATCH_SIZE = 30, 4, 4
IMAGE, EOT, IGNORE = 268, 265, -100


@pytest.fixture(scope="module")
def vqa_rad_sharegpt(tmp_path_factory):
    """The first 30 VQA-RAD questions as ShareGPT JSON, and the image folder."""
    root = require_dataset("vqa_rad")
    with open(root / "VQA_RAD Dataset Public.json", encoding="utf-8") as f:
        rows = json.load(f)[:NUM_RECORDS]
    records = [
        {
            "conversations": [
                {"from": "human", "value": row["question"]},
                {"from": "gpt", "value": str(row["answer"])},
            ],
            "image": row["image_name"],
            "answer_type": row["answer_type"].strip(),
        }
        for row in rows
    ]
    source = tmp_path_factory.mktemp("vqa_rad") / "vqa_rad.json"
    source.write_text(json.dumps(records))
    return source, root / "VQA_RAD Image Folder"


def load(vqa_rad_sharegpt, tiny_tokenizer, image_size):
    source, image_dir = vqa_rad_sharegpt
    model_transform = MedcapTransform(
        tiny_tokenizer, NUM_IMAGE_TOKENS, max_seq_len=256, image_transform=open_clip_image_transform(image_size)
    )
    return ShareGPTImageDataset(str(source), model_transform, image_dir=str(image_dir))


def first_batch(dataset, pad_id):
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, collate_fn=lambda b: padded_collate_images(b, pad_id))
    return next(iter(loader))


def test_vqa_rad_batch_shapes_and_labels(vqa_rad_sharegpt, tiny_tokenizer):
    dataset = load(vqa_rad_sharegpt, tiny_tokenizer, image_size=224)
    assert len(dataset) == NUM_RECORDS and dataset.skipped == []
    assert {r["answer_type"] for r in dataset.records} <= {"CLOSED", "OPEN"}
    batch = first_batch(dataset, tiny_tokenizer.pad_id)
    assert batch["images"].shape == (BATCH_SIZE, 3, 224, 224)
    assert torch.isfinite(batch["images"]).all()
    assert batch["tokens"].shape == batch["labels"].shape and batch["tokens"].shape[0] == BATCH_SIZE
    assert (batch["tokens"] == IMAGE).sum(dim=1).tolist() == [NUM_IMAGE_TOKENS] * BATCH_SIZE
    for row in range(BATCH_SIZE):
        trained = [label for label in batch["labels"][row].tolist() if label != IGNORE]
        answer = dataset.records[row]["conversations"][1]["value"].strip()
        assert trained[-1] == EOT
        raw = tiny_tokenizer.decode(trained, truncate_at_eos=False, skip_special_tokens=False)
        assert raw == f"<|start_header_id|>assistant<|end_header_id|>\n\n{answer}<|eot_id|>"
        assert tiny_tokenizer.decode(trained) == answer


def test_vqa_rad_forward_through_tiny_model(vqa_rad_sharegpt, tiny_tokenizer, tiny_assets):
    dataset = load(vqa_rad_sharegpt, tiny_tokenizer, image_size=32)  # the tiny tower's input size
    batch = first_batch(dataset, tiny_tokenizer.pad_id)
    assert batch["images"].shape == (BATCH_SIZE, 3, 32, 32)
    model = build_tiny_model(tiny_assets, num_tokens=NUM_IMAGE_TOKENS)
    assert model.num_image_tokens == NUM_IMAGE_TOKENS and model.image_token_id == IMAGE
    hidden = model(batch["tokens"], images=batch["images"])  # [b, s, d]
    assert hidden.shape == (*batch["tokens"].shape, 64)
    loss_sum, num_tokens = LabelPositionCrossEntropy()(hidden, batch["labels"], model.lm_head)
    assert num_tokens == int((batch["labels"][:, 1:] != IGNORE).sum()) > 0
    loss = loss_sum / num_tokens
    assert torch.isfinite(loss)
    loss.backward()
    projector_grads = [p.grad for p in model.image_encoder.projector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in projector_grads)
    assert any(g.abs().sum() > 0 for g in projector_grads)  # the images reach the loss
