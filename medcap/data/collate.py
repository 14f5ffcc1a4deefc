"""Batching: right-pad tokens and labels, stack images in batch order."""

from typing import Any, Dict, List

import torch

from medcap.data.transform import CROSS_ENTROPY_IGNORE_IDX


def padded_collate_images(
    batch: List[Dict[str, Any]], pad_id: int, ignore_idx: int = CROSS_ENTROPY_IGNORE_IDX
) -> Dict[str, Any]:
    """Collate samples of :class:`~medcap.data.sharegpt.ShareGPTImageDataset`.

    Args:
        batch (List[Dict[str, Any]]): samples with ``tokens``, ``labels`` and ``image`` (tensor or None).
        pad_id (int): the tokenizer's pad id.
        ignore_idx (int): label padding.

    Returns:
        Dict[str, Any]: ``tokens`` ``[b, s]``, ``labels`` ``[b, s]`` and ``images`` ``[n, 3, h, w]`` for
        the ``n`` samples that have an image (in batch order), or None when none has.
    """
    longest = max(len(sample["tokens"]) for sample in batch)
    tokens = torch.full((len(batch), longest), pad_id, dtype=torch.long)  # [b, s]
    labels = torch.full((len(batch), longest), ignore_idx, dtype=torch.long)  # [b, s]
    for row, sample in enumerate(batch):
        tokens[row, : len(sample["tokens"])] = torch.tensor(sample["tokens"])
        labels[row, : len(sample["labels"])] = torch.tensor(sample["labels"])
    images = [sample["image"] for sample in batch if sample.get("image") is not None]
    return {"tokens": tokens, "labels": labels, "images": torch.stack(images) if images else None}
