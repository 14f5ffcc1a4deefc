"""The validator refuses what training refuses (issues 14, 16): empty lists, JSON Lines (named, with
the converter that reads it), a UTF-8 byte-order mark read everywhere, images over
max_image_pixels, records over max_seq_len; and what training keeps it says (duplicates, truncated
records, animated GIFs, tiny images)."""

import json
import logging
import shlex
import struct
import zlib

import numpy as np
import PIL.Image
import pytest

from helpers import load_script
from medcap.data import MedcapTransform, RecordError, ShareGPTImageDataset, load_image, open_clip_image_transform
from medcap.data.converters import convert_csv, from_plm, read_sharegpt
from medcap.data.images import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from medcap.data.validation import validate_files

NUM_IMAGE_TOKENS = 4
BOM = b"\xef\xbb\xbf"


def record(question="Spot?", answer="no", **fields):
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **fields}


def build(source, tiny_tokenizer, max_seq_len=128, **kwargs):
    return ShareGPTImageDataset(str(source), MedcapTransform(tiny_tokenizer, NUM_IMAGE_TOKENS, max_seq_len), **kwargs)


def validate(*args):
    return load_script("tools/validate_dataset.py").main([*map(str, args), "--quiet"])


def errors_of(path, **kwargs):
    report = validate_files([str(path)], progress=False, **kwargs)
    return [(issue.record, issue.field, issue.message) for issue in report.errors], report


# --- files training refuses ---------------------------------------------------------------------


def test_empty_list_is_refused_by_both(tmp_path, tiny_tokenizer, capsys):
    path = tmp_path / "empty.json"
    path.write_text("[]")
    with pytest.raises(RecordError, match=r"empty\.json: field '<file>': no usable records \(0 in file"):
        build(path, tiny_tokenizer)
    errors, _ = errors_of(path)
    assert errors == [(None, None, "holds no records (an empty list); training refuses it")]
    assert validate(path) == 1


def test_json_lines_is_named_with_the_converter_that_reads_it(tmp_path, tiny_tokenizer):
    rows = [record("Q1?", "A1", image="a.png"), record("Q2?", "A2")]
    path = tmp_path / "plm.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(RecordError) as caught:
        build(path, tiny_tokenizer)
    message = str(caught.value)
    assert "this is JSON Lines (one record a line, e.g. the Perception-LM format)" in message
    errors, _ = errors_of(path)
    assert len(errors) == 1 and "this is JSON Lines" in errors[0][2]
    assert validate(path) == 1
    # the named command converts it into a file training reads
    command = shlex.split(message.split("`")[1])
    assert command[:2] == ["python", "tools/convert_to_sharegpt.py"]
    assert load_script("tools/convert_to_sharegpt.py").main(command[2:]) == 0
    PIL.Image.new("L", (4, 4)).save(tmp_path / "a.png")
    converted = tmp_path / "plm_sharegpt.json"
    dataset = build(converted, tiny_tokenizer, image_dir=str(tmp_path))
    assert [r["conversations"][0]["value"] for r in dataset.records] == ["Q1?", "Q2?"]
    # a JSON Lines file with a .json name is recognised too; so is a one-line .jsonl (a dict)
    (tmp_path / "lines.json").write_text(path.read_text())
    assert "this is JSON Lines" in errors_of(tmp_path / "lines.json")[0][0][2]
    (tmp_path / "one.jsonl").write_text(json.dumps(rows[1]) + "\n")
    assert "got dict; this is JSON Lines" in errors_of(tmp_path / "one.jsonl")[0][0][2]


def test_byte_order_mark_is_read_everywhere(tmp_path, tiny_tokenizer):
    rows = [record("Q1?", "A1"), record("Q2?", "A2")]
    (tmp_path / "bom.json").write_bytes(BOM + json.dumps(rows).encode())
    assert len(build(tmp_path / "bom.json", tiny_tokenizer)) == 2              # training
    assert errors_of(tmp_path / "bom.json")[0] == []                          # validator
    assert read_sharegpt(str(tmp_path / "bom.json")) == rows                  # converter, sharegpt
    (tmp_path / "bom.jsonl").write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert from_plm(str(tmp_path / "bom.jsonl")) == rows                      # converter, PLM
    (tmp_path / "bom.csv").write_bytes(BOM + b"image,question,answer\na.png,Q1?,A1\n")
    assert convert_csv(str(tmp_path / "bom.csv"))[0]["image"] == "a.png"     # converter, CSV


# --- images training refuses, and the ones it keeps ---------------------------------------------


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side=10_000):
    """A 1-bit side x side PNG (100 MP for 10000) of ~12 kB: a decompression bomb."""
    rows = zlib.compress(bytes(side * (1 + side // 8)), 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_over_max_image_pixels_is_an_error_from_its_header(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    PIL.Image.new("L", (20, 20)).save(tmp_path / "small.png")
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(image="bomb.png"), record(image="small.png")]))
    errors, report = errors_of(path)
    assert [(index, field) for index, field, _ in errors] == [(0, "image")]
    assert "image too large: 10000x10000 = 100000000 pixels exceeds max_image_pixels=89478485" in errors[0][2]
    assert report.summary["undecodable"].tolist() == [1]
    errors, _ = errors_of(path, max_image_pixels=100)  # training's max_image_pixels, passed through
    assert [(index, field) for index, field, _ in errors] == [(0, "image"), (1, "image")]
    assert "20x20 = 400 pixels exceeds max_image_pixels=100" in errors[1][2]
    (tmp_path / "bomb.png").unlink()
    assert validate(path, "--max-image-pixels", "100", "--image-dir", tmp_path) == 1
    assert validate(path, "--max-image-pixels", "400") == 1  # bomb.png is now missing
    path.write_text(json.dumps([record(image="small.png")]))
    assert validate(path, "--max-image-pixels", "400") == 0


def gif_frames(path, values, size=(20, 20)):
    frames = [PIL.Image.new("L", size, value) for value in values]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_animated_gif_uses_its_first_frame_and_the_validator_says_so(tmp_path, tiny_tokenizer):
    gif_frames(tmp_path / "cine.gif", [30, 200, 90])
    with PIL.Image.open(tmp_path / "cine.gif") as image:
        assert image.n_frames == 3
    assert load_image(tmp_path / "cine.gif").getpixel((0, 0)) == (30, 30, 30)
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(image="cine.gif")]))
    assert build(path, tiny_tokenizer)[0]["image"].getpixel((5, 5)) == (30, 30, 30)
    errors, report = errors_of(path)
    assert errors == []
    assert [(w.record, w.field, w.message) for w in report.warnings] == [
        (0, "image", f"'{tmp_path / 'cine.gif'}' has 3 frames; training uses the first")]


def test_one_pixel_image_is_upscaled_and_the_validator_says_so(tmp_path):
    PIL.Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "dot.png")
    tensor = open_clip_image_transform(32)(load_image(tmp_path / "dot.png"))  # [3, 32, 32]
    assert tuple(tensor.shape) == (3, 32, 32)
    expected = (1.0 - OPENAI_DATASET_MEAN[0]) / OPENAI_DATASET_STD[0]  # every pixel the one red value
    assert np.allclose(tensor[0].numpy(), expected, atol=1e-5)
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(image="dot.png")]))
    errors, report = errors_of(path)
    assert errors == [] and [w.message for w in report.warnings] == [
        f"'{tmp_path / 'dot.png'}' is 1x1 pixels; training upscales it to the model's image size"]


def test_clip_constants_are_open_clips():
    from open_clip.constants import OPENAI_DATASET_MEAN as MEAN, OPENAI_DATASET_STD as STD

    assert (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD) == (tuple(MEAN), tuple(STD))


# --- lengths and duplicates ---------------------------------------------------------------------


def test_record_over_max_seq_len_is_an_error_in_the_validator_like_in_training(tmp_path, tiny_tokenizer):
    long_answer = record("Describe it.", "one two three four five six seven eight")  # 10 words
    two_turns = {"conversations": [{"from": "human", "value": "Spot?"}, {"from": "gpt", "value": "no"},
                                   {"from": "human", "value": "Why not, in many words?"},
                                   {"from": "gpt", "value": "because it is clear all over"}]}
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(), long_answer, two_turns]))
    errors, report = errors_of(path, max_seq_len=6)
    assert [(index, field) for index, field, _ in errors] == [(1, "conversations")]
    assert errors[0][2].startswith("10 words up to the first answer exceed max_seq_len=6: training refuses the record")
    (warning,) = [w for w in report.warnings if "max_seq_len" in w.message]
    assert warning.record == 2 and "1 records of data.json exceed max_seq_len=6 after their first answer: " \
                                   "training truncates them (records 2)" in warning.message
    assert report.summary["over_max_seq_len"].tolist() == [2]
    assert validate(path, "--max-seq-len", "6") == 1
    path.write_text(json.dumps([record(), two_turns]))
    assert validate(path, "--max-seq-len", "6") == 0  # truncation is a warning, as training keeps the record


def test_training_counts_truncated_records_in_one_warning(tmp_path, tiny_tokenizer, caplog):
    two_turns = {"conversations": [{"from": "human", "value": "Spot?"}, {"from": "gpt", "value": "no"},
                                   {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "clear"}]}
    transform = MedcapTransform(tiny_tokenizer, NUM_IMAGE_TOKENS, 1000)
    tokens, _ = transform.tokenize(_messages(record()))
    first_only = len(tokens)  # the first exchange alone, with its end tokens
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record(), two_turns, two_turns | {"id": 2}]))
    with caplog.at_level(logging.WARNING, logger="medcap.data.sharegpt"):
        dataset = build(path, tiny_tokenizer, max_seq_len=first_only + 2)
    assert dataset.truncated == [1, 2]
    assert dataset.lengths == [first_only, first_only + 2, first_only + 2]
    warnings = [r.getMessage() for r in caplog.records]
    assert f"{path}: 2 of 3 records are longer than max_seq_len={first_only + 2} and are truncated after their " \
           "first answer (later turns not trained): records 1, 2" in warnings
    assert f"{path}: 1 records repeat an earlier record (same turns and image) and are trained on again: records 2" \
           in warnings[1]


def _messages(parsed_record):
    from medcap.data.sharegpt import to_messages
    from medcap.data.schema import check_record

    return to_messages(check_record(parsed_record)[0].turns, False)


def test_duplicates_train_twice_with_a_warning_and_the_validator_agrees(tmp_path, tiny_tokenizer, caplog):
    PIL.Image.new("L", (20, 20), 5).save(tmp_path / "a.png")
    rows = [record(image="a.png"), record(image="a.png", id=7), record("Other?", image="a.png"), record(image="a.png")]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    with caplog.at_level(logging.WARNING, logger="medcap.data.sharegpt"):
        dataset = build(path, tiny_tokenizer)
    assert len(dataset) == 4 and dataset.duplicates == [1, 3]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 2 records repeat an earlier record (same turns and image) and are trained on again: records 1, 3 "
        "(tools/validate_dataset.py lists them; remove them if the repetition is not intended)"]
    _, report = errors_of(path)
    assert sorted(w.record for w in report.warnings if "duplicate" in w.message) == [1, 3, 3]  # image+question, exact
