"""Datasets, transforms and collate for medcap's ShareGPT JSON.

Names are imported lazily, so light tools (converters, validation, synthetic data) start without
paying for torch/torchtune.
"""

import importlib
from typing import Any

_EXPORTS = {
    "padded_collate_images": "medcap.data.collate",
    "LengthGroupedSampler": "medcap.data.sampler",
    "build_sampler": "medcap.data.sampler",
    "check_transform_fits_model": "medcap.data.transform",
    "medcap_transform": "medcap.data.transform",
    "ImageLoadError": "medcap.data.images",
    "load_image": "medcap.data.images",
    "open_clip_image_transform": "medcap.data.images",
    "RecordError": "medcap.data.sharegpt",
    "ShareGPTEvalDataset": "medcap.data.sharegpt",
    "ShareGPTImageDataset": "medcap.data.sharegpt",
    "load_records": "medcap.data.sharegpt",
    "parse_record": "medcap.data.sharegpt",
    "sharegpt_eval_dataset": "medcap.data.sharegpt",
    "sharegpt_image_dataset": "medcap.data.sharegpt",
    "to_messages": "medcap.data.sharegpt",
    "CROSS_ENTROPY_IGNORE_IDX": "medcap.data.transform",
    "MedcapTransform": "medcap.data.transform",
    "SequenceTooLongError": "medcap.data.transform",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medcap.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
