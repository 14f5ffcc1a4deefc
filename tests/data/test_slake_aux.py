"""Image-level questions from SLAKE's train annotations: true to the labels, balanced, train images only."""

import json
import random
from collections import Counter

import pytest

from medcap.data.converters.slake_aux import (
    auxiliary_questions,
    auxiliary_records,
    detection_organs,
    ImageFacts,
    slake_image_facts,
)
from tests.helpers import load_script, require_dataset


def test_detection_organs_maps_sides_and_findings(tmp_path):
    path = tmp_path / "detection.json"
    path.write_text(json.dumps([{"Left Kidney": [1, 2, 3, 4]}, {"Liver Cancer": [0, 0, 1, 1]}, {"Spinal Cord": [0, 0, 1, 1]}]))
    assert detection_organs(str(path)) == {"kidney", "liver"}  # the spinal cord is no question's organ


def test_questions_of_one_image_are_exact():
    fact = ImageFacts("xmlab1/source.jpg", "MRI", "abdomen", {"liver"}, "transverse")
    questions = auxiliary_questions(fact, random.Random(0), pairs=True)
    by_type = {}
    for question, answer, content_type in questions:
        by_type.setdefault(content_type, []).append((question, answer))
    assert by_type["Modality"][0] == ("Is this an MRI scan?", "Yes")
    assert by_type["Modality"][1][1] == "No" and by_type["Modality"][1][0] != "Is this an MRI scan?"
    assert by_type["Position"][0] == ("Is this a study of the abdomen?", "Yes")
    assert by_type["Organ"][0] == ("Does the picture contain liver?", "Yes")
    no_organ = by_type["Organ"][1][0].removeprefix("Does the picture contain ").removesuffix("?")
    assert no_organ not in {"liver", "spleen", "kidney", "stomach", "duodenum", "small bowel", "colon"}
    assert by_type["Plane"][0] == ("Is this a transverse plane?", "Yes")
    assert len(questions) == 8
    assert len(auxiliary_questions(fact, random.Random(0), pairs=False)) == 4  # one question per fact


def test_slake_train_facts_never_contradict_train_answers():
    root = require_dataset("slake")
    facts = slake_image_facts(str(root))
    train = [r for r in json.loads((root / "train.json").read_text()) if r["q_lang"] == "en"]
    test_images = {r["img_name"] for r in json.loads((root / "test.json").read_text()) if r["q_lang"] == "en"}
    assert len(facts) == 450 and not {f.image for f in facts} & test_images
    records = auxiliary_records(facts, str(root / "imgs"), pairs=True)
    answers = {(r["img_name"], r["question"].lower()): r["answer"].lower() for r in train}
    asked = [(r["image"], r["conversations"][0]["value"].lower(), r["conversations"][1]["value"].lower()) for r in records]
    overlapping = [(image, q, a) for image, q, a in asked if (image, q) in answers]
    assert overlapping  # some questions are also asked by SLAKE itself, and agree with it
    assert all(answers[(image, q)] == a for image, q, a in overlapping)
    counts = Counter(a for _, _, a in asked)
    assert counts["yes"] == counts["no"]
    modality_of = {r["img_name"]: r["modality"] for r in train}
    assert all(modality_of[f.image] == f.modality for f in facts)


def test_tool_refuses_to_overwrite_its_input(tmp_path):
    tool = load_script("tools/make_slake_auxiliary.py")
    train = tmp_path / "train.json"
    train.write_text("[]")
    with pytest.raises(SystemExit):
        tool.main(["--slake", str(tmp_path), "--train-json", str(train), "--output", str(train)])
    assert train.read_text() == "[]"
