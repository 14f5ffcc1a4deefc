# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""Writing a synthetic data set: split sizes, image layout, files, manifest and summary.

:func:`make_synthetic_vqa` draws every image (:mod:`medcap.data.synthetic.render`), builds the
records of each split (:mod:`medcap.data.synthetic.questions`), scores the baselines
(:mod:`medcap.metrics.baselines`) and writes the folder whole through
:func:`medcap.utils.atomic.atomic_directory`; ``manifest.json`` makes a repeat run free.
"""

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from medcap.data import schema
from medcap.data.synthetic.questions import build_records
from medcap.data.synthetic.render import MODALITIES, render_image, sample_image_params
from medcap.metrics.baselines import compute_baselines
from medcap.metrics.vqa import normalize_answer
from medcap.utils.atomic import atomic_directory, atomic_write_json

SPLIT_NAMES = ("train", "val", "test")
# Lesion counts repeat this pattern inside each split: half the images have no lesion,
# the others have 1, 2 or 3 lesions in equal shares.
LESION_COUNT_PATTERN = (0, 1, 0, 2, 0, 3)
_GENERATOR_VERSION = 1


def split_sizes(num_images: int, splits: Sequence[float]) -> List[int]:
    """Images per split: train and val rounded, test the rest.

    Args:
        num_images (int): number of images.
        splits (Sequence[float]): train, val and test fractions.

    Returns:
        List[int]: [train, val, test] image counts summing to ``num_images``.

    Raises:
        ValueError: unless ``splits`` is 3 non-negative fractions summing to 1.
    """
    if len(splits) != 3 or any(f < 0 for f in splits) or abs(sum(splits) - 1) > 1e-6:
        raise ValueError(f"splits must be 3 non-negative fractions summing to 1, got {splits}")
    train = round(num_images * splits[0])
    val = round(num_images * splits[1])
    return [train, val, num_images - train - val]


def _write_json(path: Path, value: Any) -> None:
    atomic_write_json(path, value, indent=1)


def _read_manifest(output_dir: Path) -> Optional[Dict[str, Any]]:
    path = output_dir / "manifest.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8-sig") as f:
        return json.load(f)


def make_synthetic_vqa(
    output_dir: str,
    num_images: int = 600,
    seed: int = 0,
    image_size: int = 64,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    include_captions: bool = True,
    questions_per_image: int = 4,
) -> Dict[str, Any]:
    """Generates the synthetic VQA / captioning data set into ``output_dir``.

    Images are split contiguously (train first) so that no image is in two splits. Lesion
    counts follow ``LESION_COUNT_PATTERN`` and modalities are spread evenly, both shuffled
    within each split. The same arguments give byte-identical files.

    The directory is built under a temporary sibling name and swapped in whole
    (:func:`medcap.utils.atomic.atomic_directory`). If ``output_dir`` already holds a data set
    made with the same arguments (per its ``manifest.json``), nothing is written and its
    summary is returned; a data set made with other arguments is replaced.

    Args:
        output_dir (str): destination directory.
        num_images (int): number of images.
        seed (int): seed of everything random.
        image_size (int): image side in pixels (at least 32).
        splits (Sequence[float]): train, val and test fractions.
        include_captions (bool): add one caption record per image.
        questions_per_image (int): VQA questions per image (presence included), 1 to 7.

    Returns:
        Dict[str, Any]: summary (images and records per split, records per question type,
        yes rate per closed question type, headline baselines).

    Raises:
        ValueError: on bad arguments.
        FileExistsError: if ``output_dir`` is a non-empty directory not made by this function.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    sizes = split_sizes(num_images, splits)
    arguments = {
        "num_images": num_images,
        "seed": seed,
        "image_size": image_size,
        "splits": [float(f) for f in splits],
        "include_captions": include_captions,
        "questions_per_image": questions_per_image,
        "version": _GENERATOR_VERSION,
    }
    output_dir = Path(output_dir)
    if output_dir.exists():
        manifest = _read_manifest(output_dir)
        if manifest is not None and manifest.get("arguments") == arguments:
            return manifest["summary"]
        if manifest is None and any(output_dir.iterdir()):
            raise FileExistsError(
                f"{output_dir} is not empty and has no manifest.json from make_synthetic_vqa; "
                "refusing to overwrite it"
            )
    with atomic_directory(output_dir) as staging:
        summary = _generate(staging, arguments, sizes)
        _write_json(staging / "manifest.json", {"arguments": arguments, "summary": summary})
    return summary


def _generate(work_dir: Path, arguments: Dict[str, Any], sizes: List[int]) -> Dict[str, Any]:
    """Draws images and writes records, params and baselines into ``work_dir``."""
    seed, image_size = arguments["seed"], arguments["image_size"]
    (work_dir / "images").mkdir()
    layout_rng = np.random.default_rng([seed, 0])
    params_by_id: Dict[str, Dict[str, Any]] = {}
    ids_by_split: Dict[str, List[str]] = {}
    start = 0
    for split, size in zip(SPLIT_NAMES, sizes):
        counts = layout_rng.permutation(np.resize(LESION_COUNT_PATTERN, size))
        modalities = layout_rng.permutation(np.resize(np.arange(len(MODALITIES)), size))
        ids_by_split[split] = []
        for offset in range(size):
            index = start + offset
            image_id = f"synth_{index:05d}"
            rng = np.random.default_rng([seed, index + 1, 0])
            params = sample_image_params(
                rng, image_size, MODALITIES[modalities[offset]], int(counts[offset])
            )
            pixels = render_image(params, image_size, seed=int(rng.integers(2**31)))
            # a plain save: the staging folder of atomic_directory is what appears whole
            Image.fromarray(pixels, mode="L").save(work_dir / "images" / f"{image_id}.png")
            params_by_id[image_id] = {"split": split, **params}
            ids_by_split[split].append(image_id)
        start += size

    records_by_split = {
        split: build_records(
            ids,
            params_by_id,
            split,
            image_size,
            seed,
            arguments["questions_per_image"],
            arguments["include_captions"],
        )
        for split, ids in ids_by_split.items()
    }
    for split, records in records_by_split.items():
        _write_json(work_dir / f"{split}.json", records)
    _write_json(work_dir / "params.json", {"image_size": image_size, "images": params_by_id})
    baselines = compute_baselines(records_by_split["train"], records_by_split["test"])
    _write_json(work_dir / "baselines.json", baselines)
    return _summarize(ids_by_split, records_by_split, baselines)


def _summarize(ids_by_split, records_by_split, baselines) -> Dict[str, Any]:
    summary: Dict[str, Any] = {
        "images": {split: len(ids) for split, ids in ids_by_split.items()},
        "records": {split: len(records) for split, records in records_by_split.items()},
        "question_types": {},
        "yes_rate": {},
    }
    for split, records in records_by_split.items():
        types = Counter(f"{r['answer_type']}/{r['question_type']}" for r in records)
        summary["question_types"][split] = dict(sorted(types.items()))
        yes: Dict[str, List[int]] = defaultdict(list)
        for record in records:
            if schema.normalize_answer_type(record["answer_type"]) == "CLOSED":
                answer = normalize_answer(schema.first_answer(record))
                yes[record["question_type"]].append(int(answer == "yes"))
        summary["yes_rate"][split] = {
            k: round(sum(v) / len(v), 4) for k, v in sorted(yes.items())
        }
    summary["baselines"] = {
        name: {
            "closed_accuracy": baselines[name]["closed_accuracy"],
            "open_exact_match": baselines[name]["open_exact_match"],
        }
        for name in ("majority", "question_only")
    }
    return summary
