# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""A procedurally drawn, medical-looking VQA and captioning data set with exact labels.

Each image shows an organ-like blob on a CT-, MRI- or X-ray-like background with 0 to 3
round lesions (bright or dark spots) strictly inside the organ. Every answer is computed
from the drawing parameters, which are saved in ``params.json`` next to the records, so the
labels are correct by construction and can be re-checked independently.

Layout written by :func:`make_synthetic_vqa`::

    DIR/images/synth_00000.png ...   grayscale ("L") PNGs, image_size x image_size
    DIR/train.json, val.json, test.json   ShareGPT records (no "meta": pass image_dir=DIR)
    DIR/params.json                  drawing parameters per image
    DIR/baselines.json               majority and question-only baselines (train -> test)
    DIR/manifest.json                generation arguments and summary (for idempotency)

Geometry conventions: pixel (row i, column j) has center (x=j, y=i); x grows to the right,
y grows downward; the image middle is ``(image_size - 1) / 2`` on both axes. Intensities
are in [0, 1] before the final conversion to 8-bit gray levels.
"""

import json
import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

MODALITIES = ("CT", "MRI", "X-ray")
SPLIT_NAMES = ("train", "val", "test")

# Lesion radius ranges as fractions of the image size. The gaps between the ranges make the
# size category of every lesion unambiguous (the category is read from the radius alone).
LESION_RADIUS_RANGES = {
    "small": (0.045, 0.055),
    "medium": (0.065, 0.078),
    "large": (0.090, 0.105),
}
# The largest lesion is at least this much larger (radius ratio) than the second largest.
LARGEST_LESION_MARGIN = 1.2
# |lesion intensity - organ intensity| range; 0.35 is ~89 gray levels, above the organ's
# own contrast to its surroundings (0.1 to 0.3).
LESION_CONTRAST_RANGE = (0.35, 0.48)
# Lesion counts repeat this pattern inside each split: half the images have no lesion,
# the others have 1, 2 or 3 lesions in equal shares.
LESION_COUNT_PATTERN = (0, 1, 0, 2, 0, 3)

COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
QUESTIONS = {
    "presence": "Is there a lesion?",
    "side_left": "Is there a lesion in the left half of the image?",
    "side_right": "Is there a lesion in the right half of the image?",
    "modality_closed": {
        "CT": "Is this a CT scan?",
        "MRI": "Is this an MRI scan?",
        "X-ray": "Is this an X-ray?",
    },
    "count": "How many lesions are there?",
    "location": "Where is the largest lesion?",
    "modality_open": "What is the imaging modality?",
    "size": "How large is the largest lesion?",
    "caption": "Describe the image.",
}
# Question kinds besides "presence" (which every image gets), in a fixed order.
OPTIONAL_KINDS = ("side", "modality_closed", "count", "location", "modality_open", "size")
# Closed kinds whose variant (which half, which modality) is chosen to balance yes and no.
BALANCED_KINDS = ("side", "modality_closed")
_KIND_TO_TYPES = {  # kind -> (answer_type, question_type)
    "presence": ("CLOSED", "presence"),
    "side": ("CLOSED", "side"),
    "modality_closed": ("CLOSED", "modality"),
    "count": ("OPEN", "count"),
    "location": ("OPEN", "location"),
    "modality_open": ("OPEN", "modality"),
    "size": ("OPEN", "size"),
    "caption": ("CAPTION", "caption"),
}
_GENERATOR_VERSION = 1


# ----------------------------------------------------------------------------------------
# Drawing parameters
# ----------------------------------------------------------------------------------------


def _sample_organ(rng: np.random.Generator, image_size: int) -> Dict[str, Any]:
    """Samples an organ: a rotated ellipse whose border is perturbed by a few harmonics."""
    middle = (image_size - 1) / 2
    return {
        "center": [
            round(middle + rng.uniform(-0.04, 0.04) * image_size, 3),
            round(middle + rng.uniform(-0.04, 0.04) * image_size, 3),
        ],
        "radii": [
            round(rng.uniform(0.34, 0.40) * image_size, 3),
            round(rng.uniform(0.31, 0.36) * image_size, 3),
        ],
        "angle": round(rng.uniform(-0.5, 0.5), 3),
        # border(theta) = 1 + sum_k amplitude_k * cos(k * theta + phase_k), k = 3..6
        "border_harmonics": [
            [k, round(rng.uniform(0.01, 0.035), 4), round(rng.uniform(0, 2 * math.pi), 3)]
            for k in range(3, 7)
        ],
        "intensity": None,  # set by the modality
    }


def organ_mask(organ: Dict[str, Any], image_size: int) -> np.ndarray:
    """Boolean mask of the organ drawn from its parameters.

    Args:
        organ (Dict[str, Any]): organ parameters (center, radii, angle, border_harmonics).
        image_size (int): side of the square image in pixels.

    Returns:
        np.ndarray: [image_size, image_size] bool, True inside the organ.
    """
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64)  # [h, w] each
    cx, cy = organ["center"]
    rx, ry = organ["radii"]
    cos_a, sin_a = math.cos(organ["angle"]), math.sin(organ["angle"])
    u = ((xs - cx) * cos_a + (ys - cy) * sin_a) / rx
    v = (-(xs - cx) * sin_a + (ys - cy) * cos_a) / ry
    theta = np.arctan2(v, u)
    border = np.ones_like(theta)
    for k, amplitude, phase in organ["border_harmonics"]:
        border += amplitude * np.cos(k * theta + phase)
    return np.hypot(u, v) <= border


def _sample_radii(rng: np.random.Generator, count: int, image_size: int) -> List[float]:
    """Samples lesion radii, largest first, with a unique largest lesion."""
    while True:
        categories = rng.choice(list(LESION_RADIUS_RANGES), size=count)
        radii = sorted(
            (round(rng.uniform(*LESION_RADIUS_RANGES[c]) * image_size, 3) for c in categories),
            reverse=True,
        )
        if count < 2 or radii[0] >= LARGEST_LESION_MARGIN * radii[1]:
            return radii


def _place_lesions(
    rng: np.random.Generator, radii: Sequence[float], mask: np.ndarray
) -> Optional[List[List[float]]]:
    """Finds lesion centers: disks inside the organ, off the midlines, not touching.

    Returns:
        Optional[List[List[float]]]: one [x, y] per radius, or None if placement failed.
    """
    image_size = mask.shape[0]
    middle = (image_size - 1) / 2
    ys, xs = np.mgrid[0:image_size, 0:image_size]
    centers: List[List[float]] = []
    for radius in radii:
        # candidates: organ pixels whose disk of radius + 1.5 stays in the organ, and whose
        # disk stays out of a band around both midlines (so every lesion has one quadrant)
        for _ in range(200):
            x = round(rng.uniform(0, image_size - 1), 3)
            y = round(rng.uniform(0, image_size - 1), 3)
            if abs(x - middle) < radius + 1 or abs(y - middle) < radius + 1:
                continue
            near = (xs - x) ** 2 + (ys - y) ** 2 <= (radius + 1.5) ** 2
            if not mask[near].all():
                continue
            if any(math.dist((x, y), c) < radius + r + 3 for c, r in zip(centers, radii)):
                continue
            centers.append([x, y])
            break
        else:
            return None
    return centers


def sample_image_params(
    rng: np.random.Generator, image_size: int, modality: str, lesion_count: int
) -> Dict[str, Any]:
    """Samples the drawing parameters of one image.

    Args:
        rng (np.random.Generator): random source (consumed deterministically).
        image_size (int): side of the square image in pixels.
        modality (str): one of ``MODALITIES``.
        lesion_count (int): number of lesions, 0 to 3.

    Returns:
        Dict[str, Any]: ``{"modality", "organ", "lesions"}``; each lesion has ``center``
        [x, y], ``radius``, ``intensity`` (organ intensity +- contrast) and ``polarity``.

    Raises:
        ValueError: if ``modality`` or ``lesion_count`` is not supported.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if not 0 <= lesion_count <= 3:
        raise ValueError(f"lesion_count must be in 0..3, got {lesion_count}")
    organ_intensity = {"CT": (0.50, 0.60), "MRI": (0.38, 0.48), "X-ray": (0.30, 0.36)}
    for _ in range(100):
        organ = _sample_organ(rng, image_size)
        organ["intensity"] = round(rng.uniform(*organ_intensity[modality]), 3)
        radii = _sample_radii(rng, lesion_count, image_size)
        centers = _place_lesions(rng, radii, organ_mask(organ, image_size))
        if centers is not None:
            break
    else:
        raise RuntimeError(f"could not place {lesion_count} lesions at image_size={image_size}")
    lesions = []
    for center, radius in zip(centers, radii):
        contrast = rng.uniform(*LESION_CONTRAST_RANGE)
        polarity = "bright" if rng.random() < 0.5 else "dark"
        if organ["intensity"] - contrast < 0.02:  # no room below: use a bright lesion
            polarity = "bright"
        elif organ["intensity"] + contrast > 0.98:  # no room above: use a dark lesion
            polarity = "dark"
        sign = 1.0 if polarity == "bright" else -1.0
        intensity = round(organ["intensity"] + sign * contrast, 3)
        lesions.append(
            {"center": center, "radius": radius, "intensity": intensity, "polarity": polarity}
        )
    return {"modality": modality, "organ": organ, "lesions": lesions}


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding. image: [h, w] float."""
    half = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        padded = np.pad(image, pad, mode="edge")
        n = image.shape[axis]
        image = sum(
            w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel)
        )
    return image


def _ellipse(xs, ys, cx, cy, rx, ry) -> np.ndarray:
    """Normalized elliptic radius (1 on the border) of every pixel. Returns [h, w]."""
    return np.hypot((xs - cx) / rx, (ys - cy) / ry)


def _draw_background(rng: np.random.Generator, modality: str, size: int) -> np.ndarray:
    """Draws the body around the organ. Returns [size, size] float in [0, 1]."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    middle = (size - 1) / 2
    if modality == "CT":
        # air, a round body of soft tissue with a darker fat rim and a bright vertebra
        body = _ellipse(xs, ys, middle, middle + 0.02 * size, 0.49 * size, 0.45 * size)
        image = np.where(body <= 1.0, 0.30, 0.02)
        image = np.where((body > 0.9) & (body <= 1.0), 0.20, image)
        spine = _ellipse(xs, ys, middle, middle + 0.40 * size, 0.06 * size, 0.04 * size)
        image = np.where(spine <= 1.0, 0.92, image)
    elif modality == "MRI":
        # rounder body, bright fat ring, dark background
        body = _ellipse(xs, ys, middle, middle, 0.48 * size, 0.49 * size)
        image = np.where(body <= 1.0, 0.22, 0.03)
        image = np.where((body > 0.93) & (body <= 1.0), 0.62, image)
    else:  # X-ray: projection with bright bone streaks, darker lung-like organ drawn later
        image = 0.45 + 0.12 * np.cos(np.pi * (xs - middle) / size)
        image = np.where(np.abs(xs - middle) > 0.47 * size, 0.06, image)
        for k in range(6):  # rib-like arcs
            y0 = (0.08 + 0.16 * k + rng.uniform(-0.02, 0.02)) * size
            arc = y0 + 0.25 * size * ((xs - middle) / size) ** 2 * 4
            image = np.where(np.abs(ys - arc) < 0.025 * size, image + 0.3, image)
    return image


def render_image(params: Dict[str, Any], image_size: int, seed: int) -> np.ndarray:
    """Draws one image from its parameters.

    Args:
        params (Dict[str, Any]): output of :func:`sample_image_params`.
        image_size (int): side of the square image in pixels.
        seed (int): seed of the texture (noise, bias field, bone streaks).

    Returns:
        np.ndarray: [image_size, image_size] uint8 gray levels.
    """
    rng = np.random.default_rng(seed)
    modality, organ = params["modality"], params["organ"]
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64)  # [h, w]
    image = _draw_background(rng, modality, image_size)
    image = np.where(organ_mask(organ, image_size), organ["intensity"], image)
    for lesion in params["lesions"]:
        # anti-aliased disk: weight 1 inside, 0 outside, linear over one pixel at the edge
        distance = np.hypot(xs - lesion["center"][0], ys - lesion["center"][1])
        weight = np.clip(lesion["radius"] + 0.5 - distance, 0.0, 1.0)
        image = (1 - weight) * image + weight * lesion["intensity"]
    if modality == "CT":  # sharp structures, grainy noise
        image = _gaussian_blur(image, 0.5) + rng.normal(0, 0.025, image.shape)
    elif modality == "MRI":  # smooth, low noise, multiplicative bias field
        gx, gy = rng.uniform(-1, 1, size=2)
        bias = 1 + 0.08 * (gx * (xs / image_size - 0.5) + gy * (ys / image_size - 0.5)) * 2
        noise = _gaussian_blur(rng.normal(0, 0.03, image.shape), 1.0)
        image = _gaussian_blur(image, 0.8) * bias + noise
    else:  # X-ray: soft projection blur, fine noise
        image = _gaussian_blur(image, 0.7) + rng.normal(0, 0.012, image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Answers, questions and records
# ----------------------------------------------------------------------------------------


def size_category(radius: float, image_size: int) -> str:
    """Size word of a lesion radius: "small", "medium" or "large"."""
    for name, (low, high) in LESION_RADIUS_RANGES.items():
        if low * image_size - 1e-6 <= radius <= high * image_size + 1e-6:
            return name
    raise ValueError(f"radius {radius} is in no size range at image_size={image_size}")


def quadrant(center: Sequence[float], image_size: int) -> str:
    """Quadrant of a point: "upper left", "upper right", "lower left" or "lower right"."""
    middle = (image_size - 1) / 2
    vertical = "upper" if center[1] < middle else "lower"
    horizontal = "left" if center[0] < middle else "right"
    return f"{vertical} {horizontal}"


def image_facts(params: Dict[str, Any], image_size: int) -> Dict[str, Any]:
    """Facts every answer is read from.

    Returns:
        Dict[str, Any]: modality, count, left/right (any lesion in that half), size and
        location of the largest lesion ("none" without lesions).
    """
    lesions = params["lesions"]
    middle = (image_size - 1) / 2
    largest = max(lesions, key=lambda lesion: lesion["radius"]) if lesions else None
    return {
        "modality": params["modality"],
        "count": len(lesions),
        "left": any(lesion["center"][0] < middle for lesion in lesions),
        "right": any(lesion["center"][0] > middle for lesion in lesions),
        "size": size_category(largest["radius"], image_size) if largest else "none",
        "location": quadrant(largest["center"], image_size) if largest else "none",
    }


def caption(facts: Dict[str, Any]) -> str:
    """Templated one-sentence report, e.g. "CT image showing the organ with no lesions."."""
    count = facts["count"]
    if count == 0:
        return f"{facts['modality']} image showing the organ with no lesions."
    subject = "it is" if count == 1 else "the largest is"
    noun = "lesion" if count == 1 else "lesions"
    return (
        f"{facts['modality']} image showing the organ with {COUNT_WORDS[count]} {noun}; "
        f"{subject} {facts['size']} and located in the {facts['location']}."
    )


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _question_variants(kind: str, facts: Dict[str, Any]) -> List[Tuple[str, str]]:
    """All (question, answer) pairs of a question kind for one image."""
    if kind == "presence":
        return [(QUESTIONS["presence"], _yes_no(facts["count"] > 0))]
    if kind == "side":
        return [
            (QUESTIONS["side_left"], _yes_no(facts["left"])),
            (QUESTIONS["side_right"], _yes_no(facts["right"])),
        ]
    if kind == "modality_closed":
        return [
            (question, _yes_no(name == facts["modality"]))
            for name, question in QUESTIONS["modality_closed"].items()
        ]
    if kind == "count":
        return [(QUESTIONS["count"], str(facts["count"]))]
    if kind == "location":
        return [(QUESTIONS["location"], facts["location"])]
    if kind == "modality_open":
        return [(QUESTIONS["modality_open"], facts["modality"])]
    if kind == "size":
        return [(QUESTIONS["size"], facts["size"])]
    raise ValueError(f"unknown question kind {kind!r}")


def _choose_balanced(
    rng: np.random.Generator, variants: List[Tuple[str, str]], answer_counts: Counter
) -> Optional[Tuple[str, str]]:
    """Picks a variant whose yes/no answer is the one seen least so far.

    Returns:
        Optional[Tuple[str, str]]: (question, answer), or None when every variant would
        give the answer that is already ahead.
    """
    fewest = min(answer_counts[a] for a in ("yes", "no"))
    wanted = [a for a in ("yes", "no") if answer_counts[a] == fewest]
    matching = [v for v in variants if v[1] in wanted]
    return matching[int(rng.integers(len(matching)))] if matching else None


def _record(image_id, split, kind, question, answer, modality) -> Dict[str, Any]:
    answer_type, question_type = _KIND_TO_TYPES[kind]
    return {
        "id": f"{image_id}_{kind}",
        "image": f"images/{image_id}.png",
        "conversations": [
            {"from": "human", "value": question},
            {"from": "gpt", "value": answer},
        ],
        "answer_type": answer_type,
        "question_type": question_type,
        "modality": modality,
        "split": split,
    }


def build_records(
    image_ids: Sequence[str],
    params_by_id: Dict[str, Dict[str, Any]],
    split: str,
    image_size: int,
    seed: int,
    questions_per_image: int = 4,
    include_captions: bool = True,
) -> List[Dict[str, Any]]:
    """Builds the ShareGPT records of one split.

    Every image gets the presence question plus ``questions_per_image - 1`` other kinds
    tried in a random order. For the side ("Is there a lesion in the left/right half of the
    image?") and closed modality questions, the variant (left/right, which modality) is
    chosen so that yes and no stay balanced within the split; when no variant can give the
    answer that is behind, that kind is skipped for this image and the next kind is tried
    (so an image gets fewer questions only when ``questions_per_image`` exceeds 5).

    Args:
        image_ids (Sequence[str]): images of the split, in order.
        params_by_id (Dict[str, Dict[str, Any]]): drawing parameters per image id.
        split (str): split name written into each record.
        image_size (int): side of the images in pixels.
        seed (int): seed of the question choices.
        questions_per_image (int): questions per image, the presence question included.
        include_captions (bool): add one caption record per image.

    Returns:
        List[Dict[str, Any]]: records, grouped by image.
    """
    if not 1 <= questions_per_image <= 1 + len(OPTIONAL_KINDS):
        raise ValueError(
            f"questions_per_image must be in 1..{1 + len(OPTIONAL_KINDS)}, "
            f"got {questions_per_image}"
        )
    answer_counts: Dict[str, Counter] = defaultdict(Counter)
    records = []
    for image_id in image_ids:
        rng = np.random.default_rng([seed, int(image_id.rsplit("_", 1)[1]), 1])
        facts = image_facts(params_by_id[image_id], image_size)
        chosen = {"presence": _question_variants("presence", facts)[0]}
        for index in rng.permutation(len(OPTIONAL_KINDS)):
            if len(chosen) == questions_per_image:
                break
            kind = OPTIONAL_KINDS[index]
            variants = _question_variants(kind, facts)
            if kind in BALANCED_KINDS:
                picked = _choose_balanced(rng, variants, answer_counts[kind])
                if picked is None:  # this image would tip the balance: ask something else
                    continue
            else:
                picked = variants[0]
            chosen[kind] = picked
        for kind in ("presence",) + OPTIONAL_KINDS:
            if kind in chosen:
                question, answer = chosen[kind]
                answer_counts[kind][answer] += 1
                records.append(_record(image_id, split, kind, question, answer, facts["modality"]))
        if include_captions:
            records.append(
                _record(
                    image_id,
                    split,
                    "caption",
                    QUESTIONS["caption"],
                    caption(facts),
                    facts["modality"],
                )
            )
    return records


# ----------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------


def _answer(record: Dict[str, Any]) -> str:
    return record["conversations"][1]["value"].strip().lower()


def _question(record: Dict[str, Any]) -> str:
    return record["conversations"][0]["value"].strip()


def _most_common(counter: Counter) -> str:
    """Most frequent key; ties go to the alphabetically first key."""
    return min(counter, key=lambda key: (-counter[key], key))


def compute_baselines(
    train_records: Sequence[Dict[str, Any]], test_records: Sequence[Dict[str, Any]]
) -> Dict[str, Any]:
    """Scores two answer-without-looking baselines learned on train, on test.

    * majority: the most frequent train answer of each (answer_type, question_type);
    * question_only: the most frequent train answer of each exact question text, falling
      back to the majority answer of its type for question texts not seen in train.

    Answers are compared after ``strip().lower()``; ties between equally frequent answers
    go to the alphabetically first. Accuracy is exact match, reported for CLOSED and OPEN
    records (``closed_accuracy``, ``open_exact_match``), per answer type and per
    ``"<answer_type>/<question_type>"``. Types absent from test have no entry, and the
    headline numbers are None when test has no CLOSED (or OPEN) record.

    Args:
        train_records (Sequence[Dict[str, Any]]): records with ``conversations`` (human
            question first, answer second), ``answer_type`` and ``question_type``.
        test_records (Sequence[Dict[str, Any]]): records of the same shape.

    Returns:
        Dict[str, Any]: ``{"majority": {...}, "question_only": {...}, "num_train",
        "num_test"}``; each baseline holds ``closed_accuracy``, ``open_exact_match``,
        ``by_answer_type``, ``by_question_type`` (each with ``accuracy`` and ``count``) and
        the learned ``answers``.

    Raises:
        ValueError: if a record lacks a field, naming the split, record index and field.
    """
    for split, records in (("train", train_records), ("test", test_records)):
        for index, record in enumerate(records):
            for field in ("conversations", "answer_type", "question_type"):
                if field not in record:
                    raise ValueError(f"{split} record {index}: missing field {field!r}")
            if len(record["conversations"]) < 2:
                raise ValueError(
                    f"{split} record {index}: field 'conversations' needs a question and "
                    f"an answer, got {len(record['conversations'])} turn(s)"
                )

    def type_key(record):
        return f"{record['answer_type']}/{record['question_type']}"

    by_type: Dict[str, Counter] = defaultdict(Counter)
    by_question: Dict[str, Counter] = defaultdict(Counter)
    for record in train_records:
        by_type[type_key(record)][_answer(record)] += 1
        by_question[_question(record)][_answer(record)] += 1
    majority = {key: _most_common(counter) for key, counter in by_type.items()}
    per_question = {key: _most_common(counter) for key, counter in by_question.items()}

    def score(predict) -> Dict[str, Any]:
        hits: Dict[str, List[int]] = defaultdict(list)
        by_answer_type: Dict[str, List[int]] = defaultdict(list)
        for record in test_records:
            hit = int(predict(record) == _answer(record))
            hits[type_key(record)].append(hit)
            by_answer_type[record["answer_type"]].append(hit)

        def summary(values):
            return {"accuracy": sum(values) / len(values), "count": len(values)}

        closed, open_ = by_answer_type.get("CLOSED"), by_answer_type.get("OPEN")
        return {
            "closed_accuracy": summary(closed)["accuracy"] if closed else None,
            "open_exact_match": summary(open_)["accuracy"] if open_ else None,
            "by_answer_type": {k: summary(v) for k, v in sorted(by_answer_type.items())},
            "by_question_type": {k: summary(v) for k, v in sorted(hits.items())},
        }

    def predict_majority(record):
        return majority.get(type_key(record), "")

    def predict_question_only(record):
        return per_question.get(_question(record), predict_majority(record))

    return {
        "majority": {**score(predict_majority), "answers": dict(sorted(majority.items()))},
        "question_only": {
            **score(predict_question_only),
            "answers": dict(sorted(per_question.items())),
        },
        "num_train": len(train_records),
        "num_test": len(test_records),
    }


# ----------------------------------------------------------------------------------------
# Data set generation
# ----------------------------------------------------------------------------------------


def _split_sizes(num_images: int, splits: Sequence[float]) -> List[int]:
    if len(splits) != 3 or any(f < 0 for f in splits) or abs(sum(splits) - 1) > 1e-6:
        raise ValueError(f"splits must be 3 non-negative fractions summing to 1, got {splits}")
    train = round(num_images * splits[0])
    val = round(num_images * splits[1])
    return [train, val, num_images - train - val]


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
        f.write("\n")


def _read_manifest(output_dir: Path) -> Optional[Dict[str, Any]]:
    path = output_dir / "manifest.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
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

    The directory is built in a temporary sibling directory and renamed into place. If
    ``output_dir`` already holds a data set made with the same arguments (per its
    ``manifest.json``), nothing is written and its summary is returned; a data set made
    with other arguments is replaced.

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
    sizes = _split_sizes(num_images, splits)
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
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        summary = _generate(work_dir, arguments, sizes)
        _write_json(work_dir / "manifest.json", {"arguments": arguments, "summary": summary})
        if output_dir.exists():
            old_dir = Path(
                tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent)
            )
            os.replace(output_dir, old_dir)  # old_dir is empty: replaced by the old data set
            os.replace(work_dir, output_dir)
            shutil.rmtree(old_dir)
        else:
            os.replace(work_dir, output_dir)
    finally:
        if work_dir.exists():
            shutil.rmtree(work_dir)
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
            if record["answer_type"] == "CLOSED":
                yes[record["question_type"]].append(int(_answer(record) == "yes"))
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


# ----------------------------------------------------------------------------------------
# Preview
# ----------------------------------------------------------------------------------------


def save_sample_grid(
    data_dir: str, output_path: str, rows: int = 4, cols: int = 4, tile_size: int = 128
) -> None:
    """Saves a grid of the first images, modalities in turn, labeled with modality and count.

    Args:
        data_dir (str): a directory written by :func:`make_synthetic_vqa`.
        output_path (str): PNG to write (atomically).
        rows (int): grid rows.
        cols (int): grid columns.
        tile_size (int): side of one tile in pixels (images are upscaled, nearest).

    Raises:
        FileNotFoundError: if ``data_dir`` has no params.json.
    """
    params_path = Path(data_dir) / "params.json"
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path} not found: run make_synthetic_vqa first")
    with open(params_path, encoding="utf-8") as f:
        images = json.load(f)["images"]
    label_height = 14
    grid = Image.new("L", (cols * tile_size, rows * (tile_size + label_height)), 255)
    draw = ImageDraw.Draw(grid)
    by_modality = [[(k, v) for k, v in images.items() if v["modality"] == m] for m in MODALITIES]
    interleaved = [pair for group in zip(*by_modality) for pair in group]  # CT, MRI, X-ray, CT...
    for slot, (image_id, params) in enumerate(interleaved[: rows * cols]):
        row, col = divmod(slot, cols)
        with Image.open(Path(data_dir) / "images" / f"{image_id}.png") as image:
            tile = image.convert("L").resize((tile_size, tile_size), Image.NEAREST)
        top = row * (tile_size + label_height)
        grid.paste(tile, (col * tile_size, top + label_height))
        label = f"{params['modality']}, {len(params['lesions'])} lesion(s)"
        draw.text((col * tile_size + 3, top + 1), label, fill=0)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
    grid.save(temp_path, format="PNG")
    os.replace(temp_path, output_path)
