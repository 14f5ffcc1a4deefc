"""Image-level labels and image-disjoint splits for linear probes, read from the datasets' own files.

Tasks (``DATASET/TASK``):

* ``slake/modality``, ``slake/location``, ``slake/organ_group`` - SLAKE's ``train.json``/``validate.json``/
  ``test.json`` (the official split), the images of one language's questions: image-disjoint within a
  language, not across (Chinese train questions use 72 of the 96 English test images; checked);
  ``location`` as given (10 values),
  ``organ_group`` the part before ``_`` (``Chest_lung`` -> ``Chest``, ``Brain_Face`` -> ``Brain``).
* ``vqarad/organ`` - VQA-RAD's ``image_organ`` (HEAD/CHEST/ABD). Its official split is by question and
  shares images, so here: test = every image a ``test_*`` question uses, train/val = the other images
  (a seeded split of images).
* ``synthetic/modality``, ``synthetic/lesion_presence``, ``synthetic/lesion_count`` -
  ``tools/make_synthetic_vqa.py``'s ``params.json`` (its train/val/test split is by image).

Every question of one image must agree on the image's label; a disagreement is an error naming the
file, the record and the field.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("train", "val", "test")
TASKS = ("slake/modality", "slake/location", "slake/organ_group", "vqarad/organ",
         "synthetic/modality", "synthetic/lesion_presence", "synthetic/lesion_count")
SLAKE_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
VQARAD_FILE = "VQA_RAD Dataset Public.json"
VQARAD_IMAGE_DIR = "VQA_RAD Image Folder"


@dataclass(frozen=True)
class LabeledImage:
    """One image of a probe task: where it is, its label and its split."""

    path: Path
    label: str
    split: str


def tasks_of(dataset: str) -> List[str]:
    """The task names of one dataset (``slake``, ``vqarad``, ``synthetic``)."""
    found = [task for task in TASKS if task.split("/")[0] == dataset]
    if not found:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted({t.split('/')[0] for t in TASKS})}")
    return found


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _collect(labels: Dict[str, Tuple[str, str]], image: str, label: str, where: str, field: str) -> None:
    """Record ``image -> label``; raise when a second record gives the same image another label."""
    seen = labels.get(image)
    if seen is not None and seen[0] != label:
        raise ValueError(f"{where}: field {field!r} is {label!r} for image {image!r}, but {seen[1]} says {seen[0]!r}")
    labels.setdefault(image, (label, where))


def slake_labels(data_dir: Path, field: str, lang: Optional[str] = None) -> List[LabeledImage]:
    """SLAKE images with ``modality``, ``location`` or ``organ_group`` labels, in the official split.

    Args:
        data_dir (Path): the folder with ``train.json``, ``validate.json``, ``test.json`` and ``imgs/``.
        field (str): ``modality``, ``location`` or ``organ_group``.
        lang (Optional[str]): keep only images of questions in this language (``en``, ``zh``); None: all
            (then the splits share images and :func:`check_image_disjoint` refuses them).
    """
    source_field = "location" if field == "organ_group" else field
    items = []
    for split, name in SLAKE_FILES.items():
        path = Path(data_dir) / name
        labels: Dict[str, Tuple[str, str]] = {}
        for index, record in enumerate(_read_json(path)):
            if lang is not None and record.get("q_lang") != lang:
                continue
            where = f"{path} record {index} (qid {record.get('qid')})"
            for key in ("img_name", source_field):
                if not isinstance(record.get(key), str) or not record[key].strip():
                    raise ValueError(f"{where}: field {key!r} is missing or empty")
            value = record[source_field].strip()
            _collect(labels, record["img_name"], value.split("_")[0] if field == "organ_group" else value, where, source_field)
        items += [LabeledImage(Path(data_dir) / "imgs" / image, label, split) for image, (label, _) in sorted(labels.items())]
    return items


def vqarad_labels(data_dir: Path, seed: int = 0, val_fraction: float = 0.2) -> List[LabeledImage]:
    """VQA-RAD images with ``image_organ`` labels; test = images of ``test_*`` questions, the rest split by image."""
    path = Path(data_dir) / VQARAD_FILE
    labels: Dict[str, Tuple[str, str]] = {}
    test_images = set()
    for index, record in enumerate(_read_json(path)):
        where = f"{path} record {index} (qid {record.get('qid')})"
        for key in ("image_name", "image_organ", "phrase_type"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{where}: field {key!r} is missing or empty")
        _collect(labels, record["image_name"], record["image_organ"].strip().upper(), where, "image_organ")
        if record["phrase_type"].startswith("test"):
            test_images.add(record["image_name"])
    rest = sorted(set(labels) - test_images)
    order = np.random.default_rng(seed).permutation(len(rest))
    val_images = {rest[i] for i in order[: round(len(rest) * val_fraction)]}
    split_of = lambda image: "test" if image in test_images else ("val" if image in val_images else "train")  # noqa: E731
    return [LabeledImage(Path(data_dir) / VQARAD_IMAGE_DIR / image, label, split_of(image))
            for image, (label, _) in sorted(labels.items())]


_SYNTHETIC_LABELS: Dict[str, Callable[[dict], str]] = {
    "modality": lambda params: str(params["modality"]),
    "lesion_presence": lambda params: "yes" if params["lesions"] else "no",
    "lesion_count": lambda params: str(len(params["lesions"])),
}


def synthetic_labels(data_dir: Path, field: str) -> List[LabeledImage]:
    """Synthetic images (``params.json``) with ``modality``, ``lesion_presence`` or ``lesion_count`` labels."""
    path = Path(data_dir) / "params.json"
    images = _read_json(path).get("images")
    if not isinstance(images, dict):
        raise ValueError(f"{path}: field 'images' is missing (not a tools/make_synthetic_vqa.py params.json)")
    items = []
    for image_id, params in sorted(images.items()):
        for key in ("split", "modality", "lesions"):
            if key not in params:
                raise ValueError(f"{path} image {image_id}: field {key!r} is missing")
        items.append(LabeledImage(Path(data_dir) / "images" / f"{image_id}.png", _SYNTHETIC_LABELS[field](params), params["split"]))
    return items


def load_task(task: str, data_dir: Path, seed: int = 0, slake_lang: Optional[str] = None) -> List[LabeledImage]:
    """The labelled images of ``task`` (one of :data:`TASKS`) under ``data_dir``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    dataset, field = task.split("/")
    if dataset == "slake":
        items = slake_labels(Path(data_dir), field, lang=slake_lang)
    elif dataset == "vqarad":
        items = vqarad_labels(Path(data_dir), seed=seed)
    else:
        items = synthetic_labels(Path(data_dir), field)
    bad = sorted({item.split for item in items} - set(SPLITS))
    if bad:
        raise ValueError(f"{task}: unknown split(s) {bad} (expected {SPLITS})")
    return items


def check_image_disjoint(items: Sequence[LabeledImage], hashes: Sequence[str]) -> None:
    """Raise when one image (by path or by content hash) lies in two splits.

    Args:
        items (Sequence[LabeledImage]): the task's images.
        hashes (Sequence[str]): the content hash of each image, in the same order.
    """
    for kind, keys in (("path", [str(item.path) for item in items]), ("content", list(hashes))):
        split_of: Dict[str, Tuple[str, Path]] = {}
        for key, item in zip(keys, items):
            seen = split_of.setdefault(key, (item.split, item.path))
            if seen[0] != item.split:
                raise ValueError(f"image in two splits (same {kind}): {seen[1]} ({seen[0]}) and {item.path} ({item.split})")


def split_indices(items: Iterable[LabeledImage]) -> Dict[str, np.ndarray]:
    """Row indices of each split."""
    splits = np.array([item.split for item in items])
    return {split: np.flatnonzero(splits == split) for split in SPLITS}
