"""One set of record rules: the validator and the training dataset agree on every record.

The property test draws records from the space where the two used to disagree (speakers, turn
order, empty turns, markers, image and meta fields, escaping paths) and checks that "the validator
reports no error" <=> "the training dataset accepts the record", and that both name the same first
field when they refuse.
"""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcap.data import MedcapTransform, RecordError, ShareGPTImageDataset
from medcap.data.schema import check_record, first_answer, first_question, normalize_answer_type
from medcap.data.validation import validate_files

SPEAKERS = ["human", "gpt", "user", "assistant", "system", "doctor", None, 3]
VALUES = ["Spot?", "no", "", "  ", "<image> Where?", "Left <image>", "<image><image>", 7, None]
any_turn = st.fixed_dictionaries({"from": st.sampled_from(SPEAKERS), "value": st.sampled_from(VALUES)})
question = st.fixed_dictionaries({"from": st.sampled_from(["human", "user"]), "value": st.sampled_from(VALUES[:7])})
answer = st.fixed_dictionaries({"from": st.sampled_from(["gpt", "assistant"]), "value": st.sampled_from(VALUES[:4])})
system = st.fixed_dictionaries({"from": st.just("system"), "value": st.sampled_from(["Be brief.", ""])})


@st.composite
def dialogues(draw):
    """Mostly well-formed dialogues (an optional system turn, human/gpt pairs), some with one turn
    replaced or dropped, plus arbitrary turn lists: every rule is exercised near the valid set."""
    turns = ([draw(system)] if draw(st.booleans()) else []) + [
        turn for _ in range(draw(st.integers(1, 2))) for turn in (draw(question), draw(answer))
    ]
    mutation = draw(st.sampled_from(["none", "none", "replace", "drop", "arbitrary"]))
    if mutation == "replace":
        turns[draw(st.integers(0, len(turns) - 1))] = draw(any_turn)
    elif mutation == "drop":
        del turns[draw(st.integers(0, len(turns) - 1))]
    elif mutation == "arbitrary":
        turns = draw(st.one_of(st.lists(any_turn, max_size=5), st.sampled_from([None, "Spot? no", {}])))
    return turns


records = st.fixed_dictionaries(
    {"conversations": dialogues()},
    optional={
        "image": st.sampled_from(["a.png", "", None, "../x.png", "/etc/x.png", "scans/../a.png", ["a.png"], 5]),
        "meta": st.sampled_from(["dir=/images", "dir=", "images", None, 3]),
        "answer_type": st.sampled_from(["OPEN", "closed ", "caption"]),
    },
)


def dataset_verdict(path: Path, tokenizer, image_dir):
    """(accepted, field of the refusal) by the training dataset, images not opened."""
    transform = MedcapTransform(tokenizer, num_image_tokens=2, max_seq_len=4096)
    try:
        ShareGPTImageDataset(str(path), transform, image_dir=image_dir, image_check="none")
    except RecordError as error:
        return False, error.field
    return True, None


def validator_verdict(path: Path, image_dir):
    report = validate_files([str(path)], image_dir=image_dir, check_image_files=False, progress=False)
    return not report.errors, report.errors[0].field if report.errors else None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(record=st.one_of(records, st.sampled_from([[], "record", 3])), use_image_dir=st.booleans())
def test_validator_passes_exactly_the_records_the_dataset_accepts(tiny_tokenizer, record, use_image_dir):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.json"
        path.write_text(json.dumps([record]))
        image_dir = folder if use_image_dir else None
        accepted, dataset_field = dataset_verdict(path, tiny_tokenizer, image_dir)
        passed, validator_field = validator_verdict(path, image_dir)
    assert accepted == passed, (record, dataset_field, validator_field)
    if not accepted and dataset_field != "<file>":
        assert dataset_field == validator_field


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_the_drawn_records_are_often_valid_and_often_not():
    """The property above is only as strong as its draws: both verdicts must be common."""
    valid = [not check_record(records.example(), file_dir=".")[1] for _ in range(300)]
    assert 0.15 < sum(valid) / len(valid) < 0.85


def good(**fields):
    return {"conversations": [{"from": "human", "value": "Spot?"}, {"from": "gpt", "value": "no"}], **fields}


@pytest.mark.parametrize(
    "record, image_dir, field",
    [
        (good(meta="images"), None, "meta"),                   # bad meta, no image: used to pass the dataset
        (good(image="a.png", meta=3), "/images", "meta"),      # bad meta under image_dir: likewise
        (good(conversations=[{"from": "human", "value": "Spot?"}, {"from": "gpt", "value": ""}]), None,
         "conversations[1].value"),                            # converter output with empty_answers="keep"
        ({"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q2"},
                            {"from": "gpt", "value": "A"}]}, None, "conversations[1].from"),  # not alternating
    ],
)
def test_the_disagreements_found_are_gone(tmp_path, tiny_tokenizer, record, image_dir, field):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record]))
    assert dataset_verdict(path, tiny_tokenizer, image_dir) == (False, field)
    assert validator_verdict(path, image_dir) == (False, field)


def test_check_record_reads_roles_image_root_and_problems(tmp_path):
    record = {
        "conversations": [
            {"from": "system", "value": ""},  # an empty system turn is allowed
            {"from": "user", "value": "<image> Which side?"},
            {"from": "assistant", "value": "left"},
        ],
        "image": "scans/a.png",
        "meta": f"dir={tmp_path}",
    }
    parsed, problems = check_record(record, file_dir="/elsewhere")
    assert problems == []
    assert parsed.turns == [("system", ""), ("user", "<image> Which side?"), ("assistant", "left")]
    assert (parsed.question, parsed.answer) == ("<image> Which side?", "left")
    assert parsed.image_path == str(tmp_path.resolve() / "scans" / "a.png")
    assert check_record(record, image_dir="/override")[0].image_path == "/override/scans/a.png"
    assert check_record({**record, "meta": None}, file_dir="/data")[0].image_path == "/data/scans/a.png"
    parsed, problems = check_record({**record, "image": "../a.png"})
    assert parsed is None and [(p.field, p.fatal) for p in problems] == [("image", True)]
    empty = {**record, "conversations": record["conversations"][:2] + [{"from": "gpt", "value": " "}]}
    parsed, problems = check_record(empty)
    assert parsed is not None and [(p.field, p.message, p.fatal) for p in problems] == [
        ("conversations[2].value", "empty answer", False)
    ]


def test_first_question_and_answer_know_every_speaker_name():
    record = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "Q?"},
                                {"from": "assistant", "value": "A"}]}
    assert (first_question(record), first_answer(record)) == ("Q?", "A")
    sharegpt = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A"}]}
    assert (first_question(sharegpt), first_answer(sharegpt)) == ("Q?", "A")
    assert first_answer({"conversations": [{"from": ["gpt"], "value": "A"}]}) is None
    assert [normalize_answer_type(v) for v in ("CLOSED ", "open", "caption", None)] == ["CLOSED", "OPEN", None, None]
