"""Bad input: every error names the file, the record index and the field; odd images load as RGB."""

import io
import json
import logging
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from helpers import build_tiny_model
from medcap.data import ImageLoadError, MedcapTransform, RecordError, ShareGPTImageDataset, load_image

NUM_IMAGE_TOKENS = 4


def record(question="Spot?", answer="no", **fields):
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **fields}


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def build(source, tiny_tokenizer, max_seq_len=128, **kwargs):
    model_transform = MedcapTransform(tiny_tokenizer, NUM_IMAGE_TOKENS, max_seq_len)
    return ShareGPTImageDataset(str(source), model_transform, **kwargs)


def assert_names_place(error, source, index, field, reason):
    """The error and its message carry the file, the record index and the field."""
    assert (error.source, error.index, error.field) == (source, index, field)
    where = f"{source}" if index is None else f"{source}: record {index}"
    assert str(error).startswith(f"{where}: field '{field}': ")
    assert reason in str(error)


def bad_record_error(tmp_path, tiny_tokenizer, bad, **kwargs):
    """Build a dataset whose record 1 is ``bad`` (record 0 is good) and return the error."""
    source = write_json(tmp_path / "data.json", [record(), bad])
    with pytest.raises(RecordError) as caught:
        build(source, tiny_tokenizer, **kwargs)
    return source, caught.value


def noise_image_bytes(image_format, size=64):
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


# --- images that cannot be used -----------------------------------------------------------------


def test_missing_image(tmp_path, tiny_tokenizer):
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(image="scans/absent.png"))
    assert_names_place(error, source, 1, "image", f"image not found: {tmp_path / 'scans' / 'absent.png'}")


def test_unreadable_image(tmp_path, tiny_tokenizer):
    (tmp_path / "garbage.png").write_bytes(b"\x00garbage, not a picture" * 10)
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(image="garbage.png"))
    assert_names_place(error, source, 1, "image", "cannot decode image")
    assert "garbage.png" in str(error)


@pytest.mark.parametrize("image_format, suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_image(tmp_path, tiny_tokenizer, image_format, suffix):
    data = noise_image_bytes(image_format)
    (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(image=f"cut.{suffix}"))
    assert_names_place(error, source, 1, "image", "truncated")


def test_image_larger_than_max_image_pixels(tmp_path, tiny_tokenizer):
    PIL.Image.new("L", (20, 20)).save(tmp_path / "big.png")
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(image="big.png"), max_image_pixels=100)
    assert_names_place(error, source, 1, "image", "image too large: 20x20 = 400 pixels exceeds max_image_pixels=100")
    PIL.Image.new("L", (10, 10)).save(tmp_path / "big.png")  # 100 pixels: allowed
    assert len(build(source, tiny_tokenizer, max_image_pixels=100)) == 2


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_default_bound_rejects_a_huge_header_without_decoding(tmp_path, tiny_tokenizer):
    # A 1-bit 10000x10000 PNG (100 MP, above PIL's and medcap's 89.5 MP bound) whose all-zero rows
    # compress to ~12 kB: a real decompression bomb. Decoding it would take ~100 MB.
    side = 10_000
    rows = zlib.compress(bytes(side * (1 + side // 8)), 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # width, height, bit depth 1, grayscale
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    assert len(bomb) < 20_000
    with PIL.Image.open(tmp_path / "bomb.png") as image:  # the header is a valid PNG's
        assert image.size == (side, side)
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(image="bomb.png"))
    assert_names_place(error, source, 1, "image", "image too large: 10000x10000 = 100000000 pixels")
    assert "max_image_pixels=89478485" in str(error)


# --- odd image modes load as RGB ----------------------------------------------------------------


def rgb_pixels(path):
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grayscale_l(tmp_path):
    PIL.Image.fromarray(np.array([[0, 77], [200, 255]], dtype=np.uint8), mode="L").save(tmp_path / "l.png")
    pixels = rgb_pixels(tmp_path / "l.png")
    assert pixels.tolist() == [[[0, 0, 0], [77, 77, 77]], [[200, 200, 200], [255, 255, 255]]]


def test_sixteen_bit_grayscale_is_windowed(tmp_path):
    values = np.array([[1000, 2000], [4200, 5000]], dtype=np.uint16)
    PIL.Image.fromarray(values).save(tmp_path / "ct.png")
    with PIL.Image.open(tmp_path / "ct.png") as image:
        assert image.mode == "I;16"
    # (v - 1000) * 255 / 4000: 0, 63.75, 204, 255
    assert rgb_pixels(tmp_path / "ct.png")[..., 0].tolist() == [[0, 64], [204, 255]]
    assert (rgb_pixels(tmp_path / "ct.png") == rgb_pixels(tmp_path / "ct.png")[..., :1]).all()  # gray


def test_flat_sixteen_bit_image_is_black(tmp_path):
    PIL.Image.fromarray(np.full((3, 3), 4000, dtype=np.uint16)).save(tmp_path / "flat.png")
    assert rgb_pixels(tmp_path / "flat.png").max() == 0


def test_cmyk(tmp_path):
    image = PIL.Image.new("CMYK", (3, 1))
    image.putdata([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])  # cyan, black, white
    image.save(tmp_path / "cmyk.tif")
    assert rgb_pixels(tmp_path / "cmyk.tif").tolist() == [[[0, 255, 255], [0, 0, 0], [255, 255, 255]]]


def test_rgba_is_composited_on_black(tmp_path):
    image = PIL.Image.new("RGBA", (3, 1))
    image.putdata([(200, 100, 50, 255), (200, 100, 50, 0), (200, 100, 50, 51)])
    image.save(tmp_path / "rgba.png")
    # opaque unchanged, transparent black, alpha 51/255 = 0.2 scales each channel by 0.2
    assert rgb_pixels(tmp_path / "rgba.png").tolist() == [[[200, 100, 50], [0, 0, 0], [40, 20, 10]]]


def test_gray_with_alpha_is_composited_on_black(tmp_path):
    PIL.Image.new("LA", (1, 1), (150, 102)).save(tmp_path / "la.png")  # 102/255 = 0.4
    assert rgb_pixels(tmp_path / "la.png").tolist() == [[[60, 60, 60]]]


def test_palette(tmp_path):
    image = PIL.Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    image.save(tmp_path / "palette.png")
    assert rgb_pixels(tmp_path / "palette.png").tolist() == [[[10, 20, 30], [200, 0, 0], [0, 255, 0]]]


def test_palette_with_transparency_is_composited_on_black(tmp_path):
    image = PIL.Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 0, 0] + [0] * (254 * 3))
    image.info["transparency"] = 1  # index 1 fully transparent
    image.save(tmp_path / "palette_t.png", transparency=1)
    assert rgb_pixels(tmp_path / "palette_t.png").tolist() == [[[10, 20, 30], [0, 0, 0]]]


def test_odd_modes_through_the_dataset(tmp_path, tiny_tokenizer):
    PIL.Image.fromarray(np.full((4, 4), 60000, dtype=np.uint16)).save(tmp_path / "ct.png")
    PIL.Image.new("RGBA", (4, 4), (200, 100, 50, 0)).save(tmp_path / "clear.png")
    source = write_json(tmp_path / "data.json", [record(image="ct.png"), record(image="clear.png")])
    dataset = build(source, tiny_tokenizer)
    assert [dataset[i]["image"].mode for i in range(2)] == ["RGB", "RGB"]
    assert dataset[1]["image"].getpixel((0, 0)) == (0, 0, 0)


def test_load_image_errors_are_image_load_errors(tmp_path):
    with pytest.raises(ImageLoadError, match="image not found"):
        load_image(tmp_path / "absent.png")
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(ImageLoadError, match="cannot decode image"):
        load_image(tmp_path / "x.png")


# --- bad JSON and bad records -------------------------------------------------------------------


def test_json_that_is_not_a_list(tmp_path, tiny_tokenizer):
    source = tmp_path / "data.json"
    source.write_text(json.dumps({"conversations": []}))
    with pytest.raises(RecordError) as caught:
        build(source, tiny_tokenizer)
    assert_names_place(caught.value, source, None, "<file>", "expected a JSON list of records, got dict")


def test_invalid_json(tmp_path, tiny_tokenizer):
    source = tmp_path / "data.json"
    source.write_text('[{"conversations": [}]')
    with pytest.raises(RecordError) as caught:
        build(source, tiny_tokenizer)
    assert_names_place(caught.value, source, None, "<file>", "not valid JSON (")
    assert "line 1 column 21" in str(caught.value)  # where json found the fault


def test_record_that_is_not_an_object(tmp_path, tiny_tokenizer):
    source, error = bad_record_error(tmp_path, tiny_tokenizer, ["human", "gpt"])
    assert_names_place(error, source, 1, "<record>", "expected an object, got list")


@pytest.mark.parametrize("bad", [{"image": "a.png"}, {"conversations": []}, {"conversations": "Spot? no"}])
def test_record_without_conversations(tmp_path, tiny_tokenizer, bad):
    source, error = bad_record_error(tmp_path, tiny_tokenizer, bad)
    assert_names_place(error, source, 1, "conversations", "missing or not a non-empty list")


def test_turns_not_alternating(tmp_path, tiny_tokenizer):
    turns = [{"from": "human", "value": "Spot?"}, {"from": "human", "value": "Really?"}, {"from": "gpt", "value": "no"}]
    source, error = bad_record_error(tmp_path, tiny_tokenizer, {"conversations": turns})
    assert_names_place(error, source, 1, "conversations[1].from", "expected assistant, got user")


def test_conversation_starting_with_gpt(tmp_path, tiny_tokenizer):
    turns = [{"from": "gpt", "value": "no"}, {"from": "human", "value": "Spot?"}]
    source, error = bad_record_error(tmp_path, tiny_tokenizer, {"conversations": turns})
    assert_names_place(error, source, 1, "conversations[0].from", "expected user, got assistant")


def test_conversation_ending_with_human(tmp_path, tiny_tokenizer):
    turns = [{"from": "human", "value": "Spot?"}, {"from": "gpt", "value": "no"}, {"from": "human", "value": "Sure?"}]
    source, error = bad_record_error(tmp_path, tiny_tokenizer, {"conversations": turns})
    assert_names_place(error, source, 1, "conversations", "must end with a gpt answer")


@pytest.mark.parametrize("answer", ["", "  \n"])
def test_empty_answer(tmp_path, tiny_tokenizer, answer):
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(answer=answer))
    assert_names_place(error, source, 1, "conversations[1].value", "empty answer")


def test_unknown_speaker_and_late_system_turn(tmp_path, tiny_tokenizer):
    turns = [{"from": "doctor", "value": "Spot?"}, {"from": "gpt", "value": "no"}]
    source, error = bad_record_error(tmp_path, tiny_tokenizer, {"conversations": turns})
    assert_names_place(error, source, 1, "conversations[0].from", "unknown speaker 'doctor'")
    turns = [{"from": "human", "value": "Spot?"}, {"from": "system", "value": "Be brief."}]
    source, error = bad_record_error(tmp_path, tiny_tokenizer, {"conversations": turns})
    assert_names_place(error, source, 1, "conversations[1].from", "a system turn may only come first")


def test_turn_without_a_string_value(tmp_path, tiny_tokenizer):
    source, error = bad_record_error(tmp_path, tiny_tokenizer, {"conversations": [{"from": "human", "value": 3}]})
    assert_names_place(error, source, 1, "conversations[0]", "expected {'from': ..., 'value': <string>}")


@pytest.mark.parametrize("image", ["../x.png", "scans/../../x.png", "/etc/x.png"])
def test_image_path_escaping_the_image_directory(tmp_path, tiny_tokenizer, image):
    (tmp_path / "x.png").write_bytes(noise_image_bytes("PNG", 4))  # exists: refused for where it is
    images = tmp_path / "images"
    images.mkdir()
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(image=image), image_dir=str(images))
    assert_names_place(error, source, 1, "image", f"path {image!r} escapes the image directory {images}")


def test_image_path_that_is_not_a_string(tmp_path, tiny_tokenizer):
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(image=["a.png"]))
    assert_names_place(error, source, 1, "image", "expected a relative path string, got list")


def test_image_markers_without_image(tmp_path, tiny_tokenizer):
    source, error = bad_record_error(tmp_path, tiny_tokenizer, record(question="<image> Spot?"))
    assert_names_place(error, source, 1, "conversations", "1 '<image>' markers but 0 image")


@pytest.mark.parametrize(
    "max_seq_len, reason",
    [
        # bos + user header (8) + 4 placeholders end at token 13
        (11, "max_seq_len=11 would cut image placeholders (the image ends at token 13"),
        # then "Spot?" + eot (19), assistant header (32), "no" + eot end at token 35; eos makes 36
        (30, "max_seq_len=30 would cut the first answer (it ends at token 35, sequence has 36 tokens)"),
    ],
)
def test_max_seq_len_too_small(tmp_path, tiny_tokenizer, max_seq_len, reason):
    PIL.Image.new("L", (4, 4)).save(tmp_path / "a.png")
    source = write_json(tmp_path / "data.json", [record(image="a.png")])
    with pytest.raises(RecordError) as caught:
        build(source, tiny_tokenizer, max_seq_len=max_seq_len)
    assert_names_place(caught.value, source, 0, "conversations", reason)


def test_placeholder_count_mismatch(tiny_assets):
    model = build_tiny_model(tiny_assets, num_tokens=NUM_IMAGE_TOKENS)
    image_id = model.image_token_id
    tokens = torch.tensor([[1, image_id, image_id, image_id, 5, 6]])  # [1, 6]: 3 placeholders
    images = torch.zeros(1, 3, 32, 32)  # one image = 4 image tokens
    with pytest.raises(ValueError, match=r"tokens hold 3 placeholders .* 1 images x 4 tokens = 4 image embeddings"):
        model.embed(tokens, images)
    with pytest.raises(ValueError, match=r"tokens hold 3 placeholders .* 0 images x 4 tokens = 0"):
        model.embed(tokens, None)
    tokens[0, 4] = image_id  # 4 placeholders for the one image: fine
    assert model.embed(tokens, images).shape == (1, 6, 64)


# --- skipping bad records -----------------------------------------------------------------------


def test_skip_bad_records_keeps_the_good_ones_and_logs_counts(tmp_path, tiny_tokenizer, caplog):
    PIL.Image.new("L", (4, 4), 9).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    records = [
        record(image="good.png"),                                           # 0 good
        record(answer=""),                                                  # 1 empty answer
        record(image="absent.png"),                                         # 2 missing image
        record("Define CT.", "A scan."),                                    # 3 good, text only
        {"conversations": [{"from": "human", "value": "Spot?"}]},           # 4 ends with human
        record(image="bad.png"),                                            # 5 unreadable
        record(image="../good.png"),                                        # 6 escapes
        record(answer="yes", image="good.png", answer_type="CLOSED"),       # 7 good
        record(image="absent.png"),                                         # 8 missing image
    ]
    source = write_json(tmp_path / "data.json", records)
    with caplog.at_level(logging.WARNING, logger="medcap.data.sharegpt"):
        dataset = build(source, tiny_tokenizer, skip_bad_records=True)
    assert len(dataset) == 3
    assert [r["conversations"][1]["value"] for r in dataset.records] == ["no", "A scan.", "yes"]
    assert dataset.records[2]["answer_type"] == "CLOSED"
    assert [(e.index, e.field) for e in dataset.skipped] == [
        (1, "conversations[1].value"), (2, "image"), (4, "conversations"), (5, "image"), (6, "image"), (8, "image"),
    ]
    assert all(isinstance(e, RecordError) and e.source == source for e in dataset.skipped)
    assert dataset[0]["image"].getpixel((0, 0)) == (9, 9, 9) and dataset[1]["image"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{source}: skipped 6 of 9 records: ")
    assert "2 x image: image not found" in warnings[0]
    assert "1 x image: cannot decode image" in warnings[0]
    assert "1 x conversations: empty answer" in warnings[0]
    assert "1 x conversations: must end with a gpt answer" in warnings[0]


def test_no_warning_when_nothing_is_skipped(tmp_path, tiny_tokenizer, caplog):
    source = write_json(tmp_path / "data.json", [record()])
    with caplog.at_level(logging.WARNING, logger="medcap.data.sharegpt"):
        dataset = build(source, tiny_tokenizer, skip_bad_records=True)
    assert len(dataset) == 1 and dataset.skipped == [] and caplog.records == []
