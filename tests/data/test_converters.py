"""Format converters: real VQA-RAD / SLAKE counts, synthetic sources, round trips, fuzzing."""

import collections
import importlib.util
import json
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, HealthCheck, settings, strategies as st

from helpers import REPO_ROOT, require_dataset
from medcap.data.converters import (
    CAPTION_INSTRUCTIONS,
    caption_instructions,
    convert_csv,
    convert_hf,
    convert_pmcoa,
    convert_rocov2,
    convert_slake,
    convert_vqarad,
    ConvertOptions,
    DatasetFormatError,
    from_llava,
    from_plm,
    read_sharegpt,
    schema_problems,
    TableColumns,
    to_llava,
    to_plm,
)
from medcap.utils.atomic import atomic_write_json, atomic_write_jsonl


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- real data


def test_vqarad_official_split_counts_and_answer_types():
    root = require_dataset("vqa_rad")
    test = convert_vqarad(str(root), ["test"])
    assert len(test) == 451
    assert collections.Counter(r["answer_type"] for r in test) == {"CLOSED": 272, "OPEN": 179}
    train = convert_vqarad(str(root), ["train"])
    assert len(train) == 1797  # freeform 1,206 + para 591
    # the release has 1,297 "CLOSED" and 2 "CLOSED " (trailing space): all 1,299 come out "CLOSED"
    assert sum(r["answer_type"] == "CLOSED" for r in train + test) == 1299
    assert all(schema_problems(r) == [] for r in train + test)
    first = test[0]
    assert first["meta"] == f"dir={Path(os.path.abspath(root)) / 'VQA_RAD Image Folder'}"  # symlinks kept
    assert (root / "VQA_RAD Image Folder" / first["image"]).is_file()
    assert {r["phrase_type"] for r in test} == {"test_freeform", "test_para"}


def test_vqarad_mevf_split_counts_and_test_rows_equal_official_test():
    root = require_dataset("vqa_rad")
    records = convert_vqarad(str(root), ["train", "test"], split_scheme="mevf")
    assert collections.Counter(r["split"] for r in records) == {"train": 3064, "test": 451}
    official_test = convert_vqarad(str(root), ["test"])

    def pairs(rows):
        return collections.Counter((r["image"], r["conversations"][0]["value"]) for r in rows)

    assert pairs(r for r in records if r["split"] == "test") == pairs(official_test)


def test_slake_english_counts_and_fields(caplog):
    root = require_dataset("slake")
    keep = ConvertOptions(empty_answers="keep")
    records = convert_slake(str(root), ["train", "val", "test"], lang="en", options=keep)
    assert collections.Counter(r["split"] for r in records) == {"train": 4919, "val": 1053, "test": 1061}
    test = [r for r in records if r["split"] == "test"]
    assert collections.Counter(r["answer_type"] for r in test) == {"OPEN": 645, "CLOSED": 416}
    assert {"answer_type", "content_type", "question_type", "modality", "location", "lang", "id"} <= set(test[0])
    assert all(r["question_type"] == r["content_type"] for r in records)  # breakdowns as for VQA-RAD
    assert test[0]["lang"] == "en" and test[0]["meta"] == f"dir={Path(os.path.abspath(root)) / 'imgs'}"
    assert all((root / "imgs" / r["image"]).is_file() for r in test[:50])
    # one official English train row has an empty answer: skipped by default, with a warning
    with caplog.at_level("WARNING"):
        train = convert_slake(str(root), ["train"], lang="en")
    assert len(train) == 4918
    assert "record 1622, field 'answer'" in caplog.text and "train.json" in caplog.text
    with pytest.raises(DatasetFormatError, match=r"train\.json', record 1622, field 'answer'"):
        convert_slake(str(root), ["train"], options=ConvertOptions(empty_answers="error"))


def test_slake_both_languages_total():
    root = require_dataset("slake")
    keep = ConvertOptions(empty_answers="keep")
    records = convert_slake(str(root), ["train", "val", "test"], lang="both", options=keep)
    assert len(records) == 14028
    counts = collections.Counter((r["split"], r["lang"]) for r in records)
    assert counts[("train", "zh")] == 4916 and counts[("val", "zh")] == 1046 and counts[("test", "zh")] == 1033


def test_slake_round_trip_through_llava_and_plm(tmp_path):
    root = require_dataset("slake")
    records = convert_slake(str(root), ["test"], lang="both")
    atomic_write_json(tmp_path / "llava.json", to_llava(records))
    atomic_write_jsonl(tmp_path / "plm.jsonl", to_plm(records))
    assert from_llava(str(tmp_path / "llava.json")) == records
    assert from_plm(str(tmp_path / "plm.jsonl")) == records


# ---------------------------------------------------------------- instructions


def test_caption_instructions():
    assert len(set(CAPTION_INSTRUCTIONS)) == 47
    assert caption_instructions(3, sample=False) == [CAPTION_INSTRUCTIONS[0]] * 3
    rng = random.Random(0)
    expected = [rng.choice(CAPTION_INSTRUCTIONS) for _ in range(20)]
    assert caption_instructions(20, sample=True, seed=0) == expected
    assert caption_instructions(20, sample=True, seed=1) != expected


# ---------------------------------------------------------------- synthetic sources


def test_rocov2(tmp_path):
    (tmp_path / "train_captions.csv").write_text('ID,Caption\nROCO_1," CT of the head. "\nROCO_2,Chest X-ray\n')
    (tmp_path / "valid_captions.csv").write_text("ID,Caption\nROCO_3,MRI\n")
    records = convert_rocov2(str(tmp_path), ["train", "val"])
    assert [r["image"] for r in records] == ["ROCO_1.jpg", "ROCO_2.jpg", "ROCO_3.jpg"]
    assert records[0]["conversations"][1]["value"] == "CT of the head."
    assert records[0]["meta"] == f"dir={tmp_path / 'images' / 'train'}"
    assert records[2]["meta"] == f"dir={tmp_path / 'images' / 'valid'}"
    rng = random.Random(0)
    assert [r["conversations"][0]["value"] for r in records[:2]] == [rng.choice(CAPTION_INSTRUCTIONS) for _ in range(2)]
    assert records[2]["conversations"][0]["value"] == CAPTION_INSTRUCTIONS[0]
    assert records[2]["split"] == "val"
    fixed = convert_rocov2(str(tmp_path), ["train"], options=ConvertOptions(instruction="Caption this."))
    assert {r["conversations"][0]["value"] for r in fixed} == {"Caption this."}
    (tmp_path / "test_captions.csv").write_text("ID,Text\nROCO_4,x\n")
    with pytest.raises(DatasetFormatError, match=r"test_captions\.csv', field 'Caption'"):
        convert_rocov2(str(tmp_path), ["test"])


def test_pmcoa(tmp_path):
    rows = [{"image": "a.jpg", "caption": "Fig 1"}, {"image": "b.jpg", "caption": "Fig 2"}]
    atomic_write_jsonl(tmp_path / "test.jsonl", rows)
    records = convert_pmcoa(str(tmp_path), ["test"])
    assert [(r["image"], r["conversations"][1]["value"]) for r in records] == [("a.jpg", "Fig 1"), ("b.jpg", "Fig 2")]
    assert records[0]["meta"].endswith("caption_T060_filtered_top4_sep_v0_subfigures")
    (tmp_path / "valid.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg"}\n')
    with pytest.raises(DatasetFormatError, match=r"valid\.jsonl', record 1, field 'caption': missing"):
        convert_pmcoa(str(tmp_path), ["val"])


def test_vqarad_and_slake_text_kind(tmp_path):
    atomic_write_json(tmp_path / "test_text.json", [{"image_name": "synpic1.jpg", "text": "An axial CT."}])
    records = convert_vqarad(str(tmp_path), ["test"], kind="text")
    assert records[0]["conversations"] == [
        {"from": "human", "value": CAPTION_INSTRUCTIONS[0]},
        {"from": "gpt", "value": "An axial CT."},
    ]
    atomic_write_json(tmp_path / "train_text.json", [{"img_name": "xmlab1/source.jpg", "text": "MRI."}] * 3)
    records = convert_slake(str(tmp_path), ["train"], kind="text")
    rng = random.Random(0)
    assert [r["conversations"][0]["value"] for r in records] == [rng.choice(CAPTION_INSTRUCTIONS) for _ in range(3)]


def test_csv_vqa_with_named_columns_and_split_column(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("img,q,a,kind,part\nx.png,Is it CT?,yes,CLOSED,train\ny.png,What organ?,liver,OPEN,validation\n")
    records = convert_csv(str(path), columns=TableColumns(image="img", question="q", answer="a", keep=["kind"]),
                          split_column="part", options=ConvertOptions(image_dir=str(tmp_path)))
    assert records == [
        {"conversations": [{"from": "human", "value": "Is it CT?"}, {"from": "gpt", "value": "yes"}],
         "image": "x.png", "meta": f"dir={tmp_path}", "kind": "CLOSED", "split": "train"},
        {"conversations": [{"from": "human", "value": "What organ?"}, {"from": "gpt", "value": "liver"}],
         "image": "y.png", "meta": f"dir={tmp_path}", "kind": "OPEN", "split": "val"},
    ]
    only_val = convert_csv(str(path), columns=TableColumns(image="img", question="q", answer="a"),
                           split_column="part", split="val")
    assert [r["image"] for r in only_val] == ["y.png"]
    path.write_text("img,q,a,part\nx.png,Is it CT?,yes,train\ny.png,,liver,validation\n")
    with pytest.raises(DatasetFormatError, match=r"table\.csv', record 1, field 'q': is empty"):
        convert_csv(str(path), columns=TableColumns(image="img", question="q", answer="a"), split_column="part")


def test_csv_captions(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("file,text\na.jpg,First.\nb.jpg,Second.\n")
    records = convert_csv(str(path), columns=TableColumns(image="file", caption="text"), split="test")
    assert [r["conversations"][0]["value"] for r in records] == [CAPTION_INSTRUCTIONS[0]] * 2
    assert [r["conversations"][1]["value"] for r in records] == ["First.", "Second."]


def test_hf_without_datasets_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="optional package `datasets`"):
        convert_hf(str(tmp_path))


def test_hf_dataset_dict_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    table = {"image": ["a.jpg", "b.jpg"], "question": ["Q1?", "Q2?"], "answer": ["A1", "A2"]}
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(table),
        "validation": datasets.Dataset.from_dict({k: v[:1] for k, v in table.items()}),
    }).save_to_disk(str(tmp_path / "hf"))
    records = convert_hf(str(tmp_path / "hf"))
    assert [(r["split"], r["image"], r["conversations"][1]["value"]) for r in records] == [
        ("train", "a.jpg", "A1"), ("train", "b.jpg", "A2"), ("val", "a.jpg", "A1")]


def test_options_and_columns_are_checked_when_built():
    with pytest.raises(ValueError, match="empty answers policy must be one of skip, keep, error, got 'drop'"):
        ConvertOptions(empty_answers="drop")
    with pytest.raises(ValueError, match="instruction must be non-empty text"):
        ConvertOptions(instruction="  ")
    with pytest.raises(ValueError, match="sample_instructions must be None, True or False"):
        ConvertOptions(sample_instructions="yes")
    with pytest.raises(ValueError, match="seed must be an integer"):
        ConvertOptions(seed="0")
    with pytest.raises(ValueError, match="question and answer columns"):
        TableColumns(question=None)
    assert TableColumns(image="file", question=None, caption="text", keep=["a"]).keep == ("a",)


def test_converted_records_are_checked_by_the_schema(tmp_path):
    """A record the training dataset would refuse is refused naming the source row; a kept empty answer passes."""
    row = {"img_name": "a.jpg", "question": "Q?", "answer": "A", "q_lang": "en", "answer_type": "OPEN", "qid": 1}
    atomic_write_json(tmp_path / "train.json", [row, dict(row, img_name="../outside.jpg")])
    escapes = r"train\.json', record 1, field 'image': path '\.\./outside\.jpg' escapes"
    with pytest.raises(DatasetFormatError, match=escapes):
        convert_slake(str(tmp_path), ["train"])
    atomic_write_json(tmp_path / "train.json", [dict(row, question="<image> and <image>?")])
    with pytest.raises(DatasetFormatError, match=r"record 0, field 'conversations': 2 '<image>' markers"):
        convert_slake(str(tmp_path), ["train"])
    atomic_write_json(tmp_path / "train.json", [dict(row, answer=" ")])
    assert convert_slake(str(tmp_path), ["train"]) == []
    (kept,) = convert_slake(str(tmp_path), ["train"], options=ConvertOptions(empty_answers="keep"))
    assert kept["conversations"][1] == {"from": "gpt", "value": ""}
    assert schema_problems(kept) == [("conversations[1].value", "empty answer")]
    atomic_write_jsonl(tmp_path / "test.jsonl", [{"image": "/elsewhere/a.jpg", "caption": "x"}])  # caption records too
    escapes = r"test\.jsonl', record 0, field 'image': path '/elsewhere/a\.jpg' escapes"
    with pytest.raises(DatasetFormatError, match=escapes):
        convert_pmcoa(str(tmp_path), ["test"])
    atomic_write_json(tmp_path / "list.json", [[1]])
    with pytest.raises(DatasetFormatError, match=r"list\.json', record 0: expected an object, got list") as error:
        read_sharegpt(str(tmp_path / "list.json"))
    assert error.value.field is None


# ---------------------------------------------------------------- LLaVA / PLM


SHAREGPT_RECORDS = [
    {"conversations": [{"from": "human", "value": "Is there a nodule?"}, {"from": "gpt", "value": "No"}],
     "image": "a/b.jpg", "meta": "dir=/data/images", "answer_type": "CLOSED", "id": "q1", "split": "test"},
    {"conversations": [{"from": "human", "value": "Compare: <image> left?"}, {"from": "gpt", "value": "Yes"},
                       {"from": "human", "value": "And right?"}, {"from": "gpt", "value": "No"}],
     "image": "c.png"},
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Define CT."},
                       {"from": "gpt", "value": "Computed tomography."}]},
]


def test_llava_round_trip_and_marker(tmp_path):
    llava = to_llava(SHAREGPT_RECORDS)
    assert llava[0]["conversations"][0]["value"] == "<image>\nIs there a nodule?"
    assert llava[1]["conversations"][0]["value"] == "Compare: <image> left?"  # marker kept in place
    assert "<image>" not in json.dumps(llava[2])  # text-only record: no marker
    atomic_write_json(tmp_path / "llava.json", llava)
    assert from_llava(str(tmp_path / "llava.json")) == SHAREGPT_RECORDS
    # plain LLaVA data: the marker may follow the question; meta comes from the image folder
    atomic_write_json(tmp_path / "plain.json", [{"id": "7", "image": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>What is shown?"}, {"from": "gpt", "value": "A chest X-ray."}]}])
    (record,) = from_llava(str(tmp_path / "plain.json"), image_dir="/imgs", split="train")
    assert record == {"id": "7", "image": "x.jpg", "meta": "dir=/imgs", "split": "train", "conversations": [
        {"from": "human", "value": "What is shown?"}, {"from": "gpt", "value": "A chest X-ray."}]}


def test_user_assistant_roles_are_accepted_and_exported_as_human_gpt():
    record = {"conversations": [{"from": "user", "value": "Q?"}, {"from": "assistant", "value": "A"}], "image": "x.jpg"}
    assert schema_problems(record) == []
    (llava,) = to_llava([record])
    assert llava["conversations"] == [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A"}]
    (plm,) = to_plm([record])
    assert [turn["from"] for turn in plm["conversations"]] == ["human", "assistant"]
    assert record["conversations"][0] == {"from": "user", "value": "Q?"}  # inputs are not modified


def test_plm_round_trip(tmp_path):
    rows = to_plm(SHAREGPT_RECORDS)
    assert [turn["from"] for turn in rows[0]["conversations"]] == ["human", "assistant"]
    atomic_write_jsonl(tmp_path / "plm.jsonl", rows)
    assert from_plm(str(tmp_path / "plm.jsonl")) == SHAREGPT_RECORDS
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "x.jpg", "conversations": [
        {"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}) + "\n")
    with pytest.raises(DatasetFormatError, match=r"bad\.jsonl', record 0, field 'conversations\[1\]\.from'"):
        from_plm(str(tmp_path / "bad.jsonl"))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, [1])
    with pytest.raises(TypeError):
        atomic_write_json(path, [object()])
    assert json.loads(path.read_text()) == [1]
    assert os.listdir(tmp_path) == ["out.json"]


# ---------------------------------------------------------------- command line


def test_cli_per_split_files_and_llava_output(tmp_path, capsys):
    convert = load_tool("convert_to_sharegpt")
    source = tmp_path / "table.csv"
    source.write_text("image,question,answer,part\na.jpg,Q1?,A1,train\nb.jpg,Q2?,A2,test\n")
    output = tmp_path / "out" / "ds_{split}.json"
    code = convert.main(["--dataset", "csv", "--input", str(source), "--split-column", "part",
                         "--output", str(output), "--to", "llava"])
    assert code == 0
    train = json.loads((tmp_path / "out" / "ds_train.json").read_text())
    assert train[0]["conversations"][0]["value"] == "<image>\nQ1?"
    assert read_sharegpt(str(tmp_path / "out" / "ds_test.json"))[0]["split"] == "test"
    source.write_text("image,question,answer\na.jpg,Q1?,\n")
    code = convert.main(["--dataset", "csv", "--input", str(source), "--output", str(tmp_path / "x.json"),
                         "--empty-answers", "error"])
    assert code == 2
    assert "table.csv', record 0, field 'answer': is empty" in capsys.readouterr().err


# ---------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def records_like(fields):
    """Objects with a source's fields, each mostly plausible, sometimes any JSON; at times one is dropped."""
    mostly_good = {key: st.one_of(good, good, good, good, good, json_values) for key, good in fields.items()}
    full = st.fixed_dictionaries(mostly_good)
    dropped = st.lists(st.sampled_from(sorted(fields)), max_size=1)
    return st.builds(lambda record, keys: {k: v for k, v in record.items() if k not in keys}, full, dropped)


def files_like(fields):
    rows = st.one_of(records_like(fields), records_like(fields), json_values)
    return st.one_of(json_values, st.lists(rows, max_size=4))


text = st.one_of(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8), st.just(""))
valid_turns = st.just([{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A"}])
turns = valid_turns | st.lists(
    st.one_of(
        st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "assistant", "user", "bot"]),
                               "value": st.one_of(text, st.just("<image>\nQ"), json_values)}),
        json_values,
    ),
    max_size=5,
)
SLAKE_FIELDS = {"img_name": text, "question": text, "answer": text,
                "q_lang": st.sampled_from(["en", "zh", "en", "zh", "fr"]),
                "answer_type": st.sampled_from(["OPEN", "CLOSED ", "closed", "other"]), "content_type": text,
                "modality": text, "qid": st.integers()}
VQARAD_FIELDS = {"qid": st.integers(), "image_name": text, "question": text, "answer": st.one_of(text, st.integers()),
                 "phrase_type": st.sampled_from(["freeform", "para", "test_freeform", "test_para", "x"]),
                 "answer_type": st.sampled_from(["OPEN", "CLOSED ", "closed", "other"]), "question_type": text}
CONVERSATION_FIELDS = {"image": text, "conversations": turns, "meta": st.sampled_from(["dir=/x", "x"])}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_clear_failure_or_valid(convert, path):
    """Conversion either gives schema-valid records or a DatasetFormatError naming the file."""
    try:
        records = convert()
    except DatasetFormatError as err:
        assert str(path) in str(err)
        if err.record is not None:
            assert f"record {err.record}" in str(err)
        if err.field is not None:
            assert f"field '{err.field}'" in str(err)
        return
    assert all(schema_problems(record) == [] for record in records)


@FUZZ
@given(content=files_like(SLAKE_FIELDS))
def test_fuzz_slake(content):
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "train.json"
        path.write_text(json.dumps(content))
        assert_clear_failure_or_valid(lambda: convert_slake(root, ["train"], lang="both"), path)


@FUZZ
@given(content=files_like(VQARAD_FIELDS))
def test_fuzz_vqarad(content):
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "VQA_RAD Dataset Public.json"
        path.write_text(json.dumps(content))
        assert_clear_failure_or_valid(lambda: convert_vqarad(root, ["train", "test"]), path)


@FUZZ
@given(content=files_like(CONVERSATION_FIELDS), fmt=st.sampled_from(["llava", "plm", "sharegpt"]))
def test_fuzz_conversation_formats(content, fmt):
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / ("data.jsonl" if fmt == "plm" else "data.json")
        if fmt == "plm":
            rows = content if isinstance(content, list) else [content]
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        else:
            path.write_text(json.dumps(content))
        reader = {"llava": from_llava, "plm": from_plm, "sharegpt": read_sharegpt}[fmt]
        assert_clear_failure_or_valid(lambda: reader(str(path)), path)


@FUZZ
@given(text=st.text(max_size=60))
def test_fuzz_csv(text):
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "table.csv"
        path.write_text("image,question,answer\n" + text, encoding="utf-8")
        assert_clear_failure_or_valid(lambda: convert_csv(str(path)), path)
