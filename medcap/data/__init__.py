"""Datasets, transforms and collate for medcap's ShareGPT JSON."""

from medcap.data.collate import padded_collate_images
from medcap.data.images import ImageLoadError, load_image, open_clip_image_transform
from medcap.data.sharegpt import RecordError, ShareGPTImageDataset, parse_record, sharegpt_image_dataset, to_messages
from medcap.data.transform import CROSS_ENTROPY_IGNORE_IDX, MedcapTransform, SequenceTooLongError

__all__ = [
    "CROSS_ENTROPY_IGNORE_IDX", "ImageLoadError", "MedcapTransform", "RecordError", "SequenceTooLongError",
    "ShareGPTImageDataset", "load_image", "open_clip_image_transform", "padded_collate_images", "parse_record",
    "sharegpt_image_dataset", "to_messages",
]
