"""Image-level questions built from SLAKE's own *train* annotations, to teach the tower to name what it sees.

SLAKE's train questions are unevenly spread: most closed questions are answerable from the question
text alone ("Is the lung healthy?" is "No" 13 times in 15), so a model can score without looking.
Every SLAKE image also carries labels that hold for the whole image: ``modality``, ``location``
(the body region), the organs boxed in ``imgs/xmlabN/detection.json`` and, through its plane
questions, the scanning plane. From those, this module asks balanced yes/no questions in SLAKE's
own phrasing, one true and one false per fact, so that only the pixels decide the answer:

    Is this a CT?                         Yes / No   (modality)
    Is this a study of the abdomen?       Yes / No   (body region)
    Does the picture contain liver?       Yes / No   (a boxed or train-answered organ / an organ of another region)
    Is this a coronal plane?              Yes / No   (plane)

Only the images of the chosen split are read (``train`` by default): no validation or test image,
answer or annotation is used. ``tools/validate_dataset.py TRAIN TEST`` (its leakage check) confirms it.
"""

import json
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set

from medcap.data.converters.common import DatasetFormatError, make_record, read_json_list

# Body region words as SLAKE's questions use them ("Is this a study of the chest?"), per ``location``.
REGION_OF_LOCATION = {
    "Abdomen": "abdomen",
    "Lung": "chest",
    "Chest_lung": "chest",
    "Chest_heart": "chest",
    "Chest_mediastinal": "chest",
    "Brain": "head",
    "Brain_Tissue": "head",
    "Brain_Face": "head",
    "Neck": "neck",
    "Pelvic Cavity": "pelvic cavity",
}

# Organs that can only be seen in one region: an organ of another region is surely absent.
ORGANS_OF_REGION = {
    "abdomen": ("liver", "spleen", "kidney", "stomach", "duodenum", "small bowel", "colon"),
    "chest": ("lung", "heart", "trachea"),
    "head": ("brain", "brain stem", "temporal lobe", "eyes"),
    "neck": ("larynx", "parotid", "mandible"),
    "pelvic cavity": ("bladder", "rectum", "femoral head"),
}

# detection.json label -> the organ word it shows ("Left Kidney" -> kidney, "Liver Cancer" -> liver).
_DETECTION_PREFIXES = ("left ", "right ")
_DETECTION_ORGAN_OF_FINDING = {
    "brain edema": "brain",
    "brain non-enhancing tumor": "brain",
    "brain enhancing tumor": "brain",
    "liver cancer": "liver",
    "lung cancer": "lung",
    "cardiomegaly": "heart",
}

_CONTAIN_QUESTION = re.compile(r"^Does the picture contain (?:the )?([a-z ]+)\?$", re.IGNORECASE)

MODALITY_QUESTIONS = {"CT": "Is this a CT?", "MRI": "Is this an MRI scan?", "X-Ray": "Is this image taken via X-Ray?"}
PLANE_QUESTIONS = {
    "transverse": "Is this a transverse plane?",
    "coronal": "Is this a coronal plane?",
    "sagittal": "Is this sagittal plane?",
}


@dataclass
class ImageFacts:
    """What SLAKE's annotations say about one image.

    Attributes:
        image (str): path relative to the image root (``xmlab1/source.jpg``).
        modality (str): ``CT``, ``MRI`` or ``X-Ray``.
        region (str): a key of :data:`ORGANS_OF_REGION`.
        organs (Set[str]): organ words known to be visible.
        plane (Optional[str]): ``transverse``, ``coronal`` or ``sagittal`` when known.
    """

    image: str
    modality: str
    region: str
    organs: Set[str] = field(default_factory=set)
    plane: Optional[str] = None


def detection_organs(path: str) -> Set[str]:
    """Organ words of one ``detection.json`` (a list of ``{label: [x, y, w, h]}``)."""
    boxes = read_json_list(path)
    organs = set()
    for index, box in enumerate(boxes):
        if not isinstance(box, dict):
            raise DatasetFormatError(f"must be an object {{label: box}}, got {type(box).__name__}", file=path, record=index)
        for label in box:
            word = label.strip().lower()
            word = _DETECTION_ORGAN_OF_FINDING.get(word, word)
            for prefix in _DETECTION_PREFIXES:
                if word.startswith(prefix):
                    word = word[len(prefix):]
            if any(word in organs_of for organs_of in ORGANS_OF_REGION.values()):
                organs.add(word)
    return organs


def _plane_word(answer: str) -> Optional[str]:
    words = answer.lower().split()
    for plane in PLANE_QUESTIONS:
        if plane in words:
            return plane
    return None


def slake_image_facts(root: str, split_file: str = "train.json") -> List[ImageFacts]:
    """Collects :class:`ImageFacts` for every image of one SLAKE split file.

    The plane of an image comes from its own open plane questions; an image without one takes
    its modality's plane when every such question in the split agrees (X-Ray: coronal).

    Args:
        root (str): the SLAKE release folder (``train.json``, ``imgs/``).
        split_file (str): which questions file defines the images (``train.json``).

    Returns:
        List[ImageFacts]: sorted by image path.
    """
    path = os.path.join(root, split_file)
    rows = [row for row in read_json_list(path) if isinstance(row, dict) and row.get("q_lang") == "en"]
    by_image: Dict[str, List[dict]] = defaultdict(list)
    for row in rows:
        by_image[row["img_name"]].append(row)
    planes_of_modality: Dict[str, Counter] = defaultdict(Counter)
    facts = []
    for image in sorted(by_image):
        image_rows = by_image[image]
        first = image_rows[0]
        location = first.get("location")
        if location not in REGION_OF_LOCATION:
            raise DatasetFormatError(f"unknown location {location!r}", file=path, field="location")
        detection = os.path.join(root, "imgs", os.path.dirname(image), "detection.json")
        organs = detection_organs(detection) if os.path.isfile(detection) else set()
        plane = None
        for row in image_rows:
            asked = _CONTAIN_QUESTION.match(str(row.get("question", "")))
            if asked and str(row.get("answer", "")).lower() == "yes" and any(
                asked.group(1).lower() in organs_of for organs_of in ORGANS_OF_REGION.values()
            ):
                organs.add(asked.group(1).lower())
            if row.get("content_type") == "Plane" and row.get("answer_type") == "OPEN":
                plane = _plane_word(str(row.get("answer", ""))) or plane
        if plane is not None:
            planes_of_modality[first["modality"]][plane] += 1
        facts.append(ImageFacts(image, first["modality"], REGION_OF_LOCATION[location], organs, plane))
    for fact in facts:
        if fact.plane is None and len(planes_of_modality[fact.modality]) == 1:
            fact.plane = next(iter(planes_of_modality[fact.modality]))
    return facts


def _yes_no(true_question: str, false_question: str, pairs: bool, rng: random.Random) -> List[tuple]:
    """Both questions of a fact, or one of them drawn with equal odds: [(question, "Yes"|"No")]."""
    both = [(true_question, "Yes"), (false_question, "No")]
    return both if pairs else [rng.choice(both)]


def auxiliary_questions(fact: ImageFacts, rng: random.Random, *, pairs: bool = False) -> List[tuple]:
    """Balanced (question, answer, content_type) triples about one image.

    Args:
        fact (ImageFacts): the image's labels.
        rng (random.Random): draws the false alternative (and, without ``pairs``, which of the two).
        pairs (bool): ask the true and the false question of every fact (twice the records);
            otherwise one of them per fact, so that Yes and No are equally likely overall.
    """
    def other(keys, truth):
        return rng.choice(sorted(key for key in keys if key != truth))

    wrong_modality = other(MODALITY_QUESTIONS, fact.modality)
    questions = [
        (q, a, "Modality")
        for q, a in _yes_no(MODALITY_QUESTIONS[fact.modality], MODALITY_QUESTIONS[wrong_modality], pairs, rng)
    ]
    wrong_region = other(ORGANS_OF_REGION, fact.region)
    region_question = "Is this a study of the {}?".format
    questions += [
        (q, a, "Position") for q, a in _yes_no(region_question(fact.region), region_question(wrong_region), pairs, rng)
    ]
    present = sorted(fact.organs)
    absent = sorted(
        o for region, organs in ORGANS_OF_REGION.items() if region != fact.region for o in organs if o not in present
    )
    if present:
        organ_question = "Does the picture contain {}?".format
        questions += [
            (q, a, "Organ")
            for q, a in _yes_no(organ_question(rng.choice(present)), organ_question(rng.choice(absent)), pairs, rng)
        ]
    if fact.plane is not None:
        wrong_plane = other(PLANE_QUESTIONS, fact.plane)
        questions += [
            (q, a, "Plane") for q, a in _yes_no(PLANE_QUESTIONS[fact.plane], PLANE_QUESTIONS[wrong_plane], pairs, rng)
        ]
    return questions


def auxiliary_records(
    facts: Sequence[ImageFacts], image_dir: str, *, seed: int = 0, pairs: bool = False
) -> List[dict]:
    """ShareGPT records of :func:`auxiliary_questions` for every image (closed answers).

    Args:
        facts (Sequence[ImageFacts]): from :func:`slake_image_facts`.
        image_dir (str): the image root written into each record's ``meta``.
        seed (int): picks the false alternatives and the organs asked about.
        pairs (bool): see :func:`auxiliary_questions`.

    Returns:
        List[dict]: records with ``answer_type="CLOSED"``, ``content_type`` and ``base_type="aux"``.
    """
    rng = random.Random(seed)
    records = []
    for fact in facts:
        for number, (question, answer, content_type) in enumerate(auxiliary_questions(fact, rng, pairs=pairs)):
            records.append(
                make_record(
                    question,
                    answer,
                    image=fact.image,
                    image_dir=os.path.abspath(image_dir),
                    answer_type="CLOSED",
                    content_type=content_type,
                    question_type=content_type,
                    modality=fact.modality,
                    base_type="aux",
                    lang="en",
                    id=f"slake-aux-{fact.image.split('/')[0]}-{number}",
                    split="train",
                    dataset="slake",
                )
            )
    return records


def write_mixed_train_file(train_json: str, aux_records: Sequence[dict], output: str) -> int:
    """Writes ``train_json``'s records followed by ``aux_records`` to ``output`` (atomically)."""
    from medcap.utils.atomic import atomic_write_json

    with open(train_json, encoding="utf-8") as f:
        records = json.load(f)
    atomic_write_json(output, list(records) + list(aux_records))
    return len(records) + len(aux_records)
