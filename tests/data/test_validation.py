"""Dataset validation: every check on a hand-built dataset, real split leakage, fuzzing."""

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, HealthCheck, settings, strategies as st
from PIL import Image

from helpers import REPO_ROOT, require_dataset
from medcap.data.converters import convert_slake, convert_vqarad
from medcap.utils.atomic import atomic_write_json as write_json_atomic
from medcap.data.validation import format_report, validate_files


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vqa(question, answer, image=None, **extra):
    record = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return {**record, **extra}


@pytest.fixture
def dataset(tmp_path):
    """train.json (8 records, one of each problem) and test.json (shares one image by content)."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images / "red.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(images / "blue.png")
    shutil.copy(images / "red.png", images / "red_copy.png")  # same bytes, other name
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    train = [
        vqa("Is it red?", "yes", "red.png"),                        # 0 fine
        vqa("Is it red?", "yes", "red.png"),                        # 1 exact duplicate of 0
        vqa("Is it red?", "no", "red.png"),                         # 2 same image+question as 0
        vqa("Is it blue?", "  ", "blue.png"),                       # 3 empty answer
        vqa("Where?", "left", "missing.png"),                       # 4 missing image
        vqa("What?", "noise", "broken.jpg"),                        # 5 undecodable image
        {"conversations": [{"from": "gpt", "value": "A"}]},         # 6 schema: gpt first, no answer pair
        vqa("Describe the image in many words please.", "one two three four five six", "blue.png"),  # 7 long
    ]
    test = [vqa("Is it red?", "yes", "red_copy.png"), vqa("Is it blue?", "yes", "blue.png", meta="dir=/elsewhere")]
    write_json_atomic(tmp_path / "train.json", [{**r, "meta": f"dir={images}"} if "image" in r else r for r in train])
    write_json_atomic(tmp_path / "test.json", test)
    return tmp_path


def test_every_check_on_a_hand_built_dataset(dataset):
    report = validate_files([str(dataset / "train.json"), str(dataset / "test.json")],
                            max_seq_len=8, progress=False)
    summary = report.summary.set_index("partition")
    train = summary.loc["train.json"]
    assert (train["records"], train["invalid"], train["images"]) == (8, 1, 4)
    assert (train["missing"], train["undecodable"], train["empty_answers"]) == (1, 1, 1)
    assert (train["dup_image_question"], train["dup_records"]) == (2, 1)
    # lengths in words (question + answer): 3+1 x3, 3+0, 1+1, 1+1, 7+6
    assert (train["len_p50"], train["len_max"], train["over_max_seq_len"]) == (4, 13, 1)
    errors = {(issue.file.split("/")[-1], issue.record, issue.field) for issue in report.errors}
    assert ("train.json", 3, "conversations[1].value") in errors   # empty answer
    assert ("train.json", 4, "image") in errors                    # missing
    assert ("train.json", 5, "image") in errors                    # does not decode
    assert ("train.json", 6, "conversations[0].from") in errors    # schema
    # test.json has no meta for record 0: relative to the file's folder -> missing; record 1 -> /elsewhere
    assert ("test.json", 0, "image") in errors and ("test.json", 1, "image") in errors
    assert not report.passed()
    assert "lengths are whitespace-separated words" in format_report(report)


def test_leakage_by_content_is_a_warning_not_an_error(dataset):
    images = dataset / "images"
    write_json_atomic(dataset / "a.json", [vqa("Q1?", "A", "red.png", split="train"),
                                           vqa("Q2?", "A", "blue.png", split="train"),
                                           vqa("Q1?", "B", "red_copy.png", split="test")])
    report = validate_files([str(dataset / "a.json")], image_dir=str(images), progress=False)
    assert list(report.summary["partition"]) == ["a.json:train", "a.json:test"]
    assert report.errors == []
    (leak,) = report.leakage.to_dict(orient="records")
    assert leak == {"partition_a": "a.json:train", "partition_b": "a.json:test", "shared_images": 1,
                    "images_a": 2, "images_b": 1, "shared_image_questions": 1}
    assert report.passed() and not report.passed(strict=True)
    validate = load_tool("validate_dataset")
    args = [str(dataset / "a.json"), "--image-dir", str(images), "--quiet"]
    assert validate.main(args) == 0
    assert validate.main(args + ["--strict"]) == 1
    assert validate.main([str(dataset / "train.json"), "--quiet", "--json", str(dataset / "r.json")]) == 1
    saved = json.loads((dataset / "r.json").read_text())
    assert saved["passed"] is False
    assert saved["num_errors"] == sum(issue["severity"] == "error" for issue in saved["issues"]) > 0


def test_token_lengths_with_a_tokenizer_json(tmp_path):
    from tokenizers import models, pre_tokenizers, Tokenizer

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation apart
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    write_json_atomic(tmp_path / "d.json", [vqa("Is it big?", "Yes, it is."), vqa("Why?", "Because.")])
    report = validate_files([str(tmp_path / "d.json")], tokenizer_path=str(tmp_path / "tokenizer.json"),
                            max_seq_len=6, image_tokens=32, progress=False)
    row = report.summary.iloc[0]
    # "Is it big ?" + "Yes , it is ." = 4 + 5 = 9; "Why ?" + "Because ." = 4 (no image: no image tokens)
    assert (row["len_max"], row["over_max_seq_len"]) == (9, 1)
    assert report.length_unit == "tokens" and report.notes == []
    validate = load_tool("validate_dataset")
    assert validate.main([str(tmp_path / "d.json"), "--tokenizer", str(tmp_path / "none.json"), "--quiet"]) == 2


def test_vqarad_official_split_shares_images_between_train_and_test(tmp_path):
    root = require_dataset("vqa_rad")
    records = convert_vqarad(str(root), ["train", "test"])
    write_json_atomic(tmp_path / "train.json", [r for r in records if r["split"] == "train"])
    write_json_atomic(tmp_path / "test.json", [r for r in records if r["split"] == "test"])
    report = validate_files([str(tmp_path / "train.json"), str(tmp_path / "test.json")], progress=False)
    assert report.errors == []
    # independent count from the release: test images that also carry train questions, by name
    release = json.loads((root / "VQA_RAD Dataset Public.json").read_text())
    train_names = {r["image_name"] for r in release if r["phrase_type"] in ("freeform", "para")}
    test_names = {r["image_name"] for r in release if r["phrase_type"] in ("test_freeform", "test_para")}
    (leak,) = report.leakage.to_dict(orient="records")
    assert (leak["shared_images"], leak["images_b"]) == (len(train_names & test_names), len(test_names))


def test_slake_english_test_images_reappear_in_chinese_train(tmp_path):
    root = require_dataset("slake")
    write_json_atomic(tmp_path / "zh_train.json", convert_slake(str(root), ["train"], lang="zh"))
    write_json_atomic(tmp_path / "en_test.json", convert_slake(str(root), ["test"], lang="en"))
    report = validate_files([str(tmp_path / "zh_train.json"), str(tmp_path / "en_test.json")], progress=False)
    assert report.errors == []
    (leak,) = report.leakage.to_dict(orient="records")
    assert (leak["shared_images"], leak["images_b"]) == (72, 96)  # SLAKE's documented overlap


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
turn = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "bot"]),
                              "value": st.one_of(st.text(max_size=6), st.just("<image> Q"), json_values)})
record = st.fixed_dictionaries({}, optional={
    "conversations": st.one_of(st.lists(st.one_of(turn, json_values), max_size=4), json_values),
    "image": st.one_of(st.sampled_from(["x.png", "../up.png", ""]), json_values),
    "meta": st.one_of(st.sampled_from(["dir=/nowhere", "nodir"]), json_values),
    "split": st.sampled_from(["train", "test"]),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.one_of(json_values, st.lists(st.one_of(record, json_values), max_size=5)))
def test_fuzz_validator_reports_instead_of_crashing(content):
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "data.json"
        path.write_text(json.dumps(content))
        report = validate_files([str(path)], max_seq_len=3, progress=False)
        for issue in report.issues:
            assert issue.file == str(path)
        if not isinstance(content, list):
            assert [issue.field for issue in report.errors] == [None]
            assert "expected a JSON list of records, got" in report.errors[0].message
        json.dumps(report.to_dict())
        format_report(report)


def test_files_with_the_same_name_keep_apart(tmp_path):
    for folder in ("a", "b"):
        write_json_atomic(tmp_path / folder / "test.json", [vqa("Q?", "A")])
    paths = [str(tmp_path / "a" / "test.json"), str(tmp_path / "b" / "test.json")]
    report = validate_files(paths + [str(tmp_path / "missing.json")], progress=False)
    assert list(report.summary["partition"]) == paths + ["missing.json"]
    assert list(report.summary["records"]) == [1, 1, 0]
    (error,) = report.errors
    assert (error.file, error.record) == (str(tmp_path / "missing.json"), None) and "does not exist" in error.message


def test_image_paths_follow_the_training_dataset_rule(tmp_path):
    # A symlink may lead out of the root only into its own Hugging Face blobs; ``..`` may not leave it.
    repo = tmp_path / "datasets--org--scans"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "5f1e"
    blobs.mkdir(parents=True)
    (snapshot / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(blobs / "scan.png")
    (snapshot / "images" / "scan.png").symlink_to(blobs / "scan.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "outside.png")
    (snapshot / "images" / "out.png").symlink_to(tmp_path / "outside.png")
    path = snapshot / "data.json"
    path.write_text(json.dumps([vqa("q1", "a1", image="images/scan.png"), vqa("q2", "a2", image="../blobs/scan.png"),
                                vqa("q3", "a3", image="images/out.png")]))
    report = validate_files([str(path)], progress=False)
    assert [(issue.record, issue.field) for issue in report.errors] == [(1, "image"), (2, "image")]
    assert "escapes the image directory" in report.errors[0].message
    assert f"is a symlink to {tmp_path / 'outside.png'}, outside the image directory" in report.errors[1].message
