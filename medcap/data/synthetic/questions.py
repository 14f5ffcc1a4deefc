# Copyright (c) medcap contributors.
# Licensed under the BSD-style license found in the LICENSE file in the root directory.

"""Facts, questions and ShareGPT records of the synthetic images.

Every answer is read from the drawing parameters (:func:`image_facts`), so the labels are
correct by construction. :func:`build_records` picks the questions of each image and keeps
yes and no balanced within a split.
"""

from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from medcap.data.schema import GPT, HUMAN
from medcap.data.synthetic.render import LESION_RADIUS_RANGES

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
            {"from": HUMAN, "value": question},
            {"from": GPT, "value": answer},
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
