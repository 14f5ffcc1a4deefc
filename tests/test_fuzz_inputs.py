"""Fuzzed inputs end in a clear error naming the file (record, field) or a counted skip, never a bare
traceback from inside a library (issue 14). Deterministic (``derandomize=True``) and quick
(a few seconds per test); the counts are in docs/reliability.md.

* ShareGPT files: mutated bytes of a valid file (flips, cuts, inserted BOM / NUL / invalid UTF-8,
  JSON Lines) through the training dataset and the validator; a file the validator passes trains;
* converter inputs: VQA-RAD, SLAKE, CSV, LLaVA, PLM and ShareGPT sources with mutated bytes
  through the command line (exit 0 or 2 with ``error: ...``);
* images: truncated, zero-byte, huge headers, wrong extensions, 1x1, 65535-px sides, animated
  GIF, 16-bit, CMYK, palette, plus byte mutations of PNG / JPEG / GIF / TIFF / BMP / WebP files:
  an RGB image or :class:`ImageLoadError` naming the file; in a dataset a counted skip.
"""

import contextlib
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from helpers import load_script
from medcap.data import ImageLoadError, MedcapTransform, RecordError, ShareGPTImageDataset, load_image
from medcap.data.validation import validate_files

EXAMPLES = {"sharegpt": 150, "converters": 150, "images": 300}  # counted in docs/reliability.md


def fuzz(examples):
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_PIXELS = 1_000_000  # fuzzed headers may claim large images; keep decoding cheap


def record(question="Spot?", answer="no", **fields):
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **fields}


# --- byte mutations -----------------------------------------------------------------------------

INSERTS = [b"\xef\xbb\xbf", b"\x00", b"\xff\xfe", b"\xc3", b'"', b"\n", b",", b"}", b"]", b"\\", b"<image>"]


@st.composite
def mutated(draw, base: bytes):
    """``base`` with a few edits: flipped bytes, a cut, inserted awkward bytes, or lines joined."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "none"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:position]
        elif kind == "insert":
            data[position:position] = draw(st.sampled_from(INSERTS))
        elif kind == "delete" and data:
            del data[position: position + draw(st.integers(1, 8))]
    return bytes(data)


# --- ShareGPT files through training and the validator ------------------------------------------

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=6), st.just(""), st.just("<image>"),
                   st.just("../a.png"), st.just("/etc/passwd"), st.just("a.png"), st.lists(st.text(max_size=3), max_size=2),
                   st.dictionaries(st.sampled_from(["from", "value"]), st.text(max_size=4), max_size=2))
SPEAKERS = st.sampled_from(["human", "gpt", "user", "assistant", "system", "bot", "", "HUMAN"])


@st.composite
def mutated_records(draw):
    """The base records with a few field-level edits (a speaker, a value, an image, a dropped or odd field)."""
    records = json.loads(SHAREGPT_BASE)
    for _ in range(draw(st.integers(1, 3))):
        target = records[draw(st.integers(0, len(records) - 1))]
        if not isinstance(target, dict):
            continue
        kind = draw(st.sampled_from(["speaker", "value", "image", "meta", "drop", "turns", "record"]))
        turns = target.get("conversations")
        if kind == "speaker" and isinstance(turns, list) and turns and isinstance(turns[0], dict):
            draw(st.sampled_from(turns))["from"] = draw(SPEAKERS)
        elif kind == "value" and isinstance(turns, list) and turns and isinstance(turns[-1], dict):
            draw(st.sampled_from(turns))["value"] = draw(VALUES)
        elif kind in ("image", "meta"):
            target[kind] = draw(VALUES)
        elif kind == "drop" and target:
            target.pop(draw(st.sampled_from(sorted(target))))
        elif kind == "turns":
            target["conversations"] = draw(st.one_of(VALUES, st.lists(VALUES, max_size=3)))
        elif kind == "record":
            records[records.index(target)] = draw(VALUES)
    return json.dumps(records).encode()


SHAREGPT_BASE = json.dumps([record(image="a.png"), record("Define CT.", "A scan.", answer_type="OPEN"),
                            record("<image> Size?", "2 cm", image="a.png")], indent=1).encode()
JSON_LINES_BASE = b"".join(json.dumps(r).encode() + b"\n" for r in json.loads(SHAREGPT_BASE))


def assert_names_the_file(error, source):
    assert isinstance(error, (RecordError, FileNotFoundError)), repr(error)
    assert str(source) in str(error)
    if isinstance(error, RecordError) and error.index is not None:
        assert f"record {error.index}: field '{error.field}'" in str(error)


@fuzz(EXAMPLES["sharegpt"])
@given(data=st.one_of(mutated_records(), mutated_records(), mutated(SHAREGPT_BASE), mutated(JSON_LINES_BASE)),
       skip=st.booleans())
def test_fuzz_sharegpt_files(tiny_tokenizer, data, skip):
    transform = MedcapTransform(tiny_tokenizer, 4, 256)
    with tempfile.TemporaryDirectory() as root:
        PIL.Image.new("L", (20, 20), 9).save(Path(root) / "a.png")
        source = Path(root) / "data.json"
        source.write_bytes(data)
        report = validate_files([str(source)], progress=False)
        assert all(issue.file == str(source) for issue in report.issues)
        try:
            dataset = ShareGPTImageDataset(str(source), transform, skip_bad_records=skip)
        except Exception as error:  # noqa: BLE001 - the assertion names anything unexpected
            assert_names_the_file(error, source)
            assert not report.passed(), f"the validator passed a file training refuses: {error}"
            event(f"training refuses: {getattr(error, 'field', type(error).__name__)}")
            return
        event(f"training builds, {'some' if dataset.skipped else 'no'} records skipped")
        assert len(dataset) + len(dataset.skipped) == len(json.loads(data.decode("utf-8-sig")))
        assert all(isinstance(error, RecordError) and error.source == source for error in dataset.skipped)
        if report.passed():
            assert dataset.skipped == []  # what the validator passes trains whole
        for index in range(len(dataset)):
            dataset[index]


# --- converter inputs through the command line --------------------------------------------------

VQARAD_ROW = {"qid": 1, "image_name": "synpic1.jpg", "question": "Is there a mass?", "answer": "yes",
              "phrase_type": "freeform", "answer_type": "CLOSED", "question_type": "PRES"}
SLAKE_ROW = {"img_name": "xmlab1/source.jpg", "question": "Which organ?", "answer": "Lung", "q_lang": "en",
             "answer_type": "OPEN", "content_type": "Organ", "modality": "CT", "qid": 7}
CONVERSATION = record("<image>\nWhat is shown?", "A chest X-ray.", image="x.png", id="r1")
SOURCES = {
    "vqarad": ("VQA_RAD Dataset Public.json", json.dumps([VQARAD_ROW, {**VQARAD_ROW, "qid": 2,
                                                                        "phrase_type": "test_para"}]).encode()),
    "slake": ("train.json", json.dumps([SLAKE_ROW, {**SLAKE_ROW, "q_lang": "zh", "qid": 8}]).encode()),
    "csv": ("table.csv", b'image,question,answer\na.jpg,"Is it, really?",yes\nb.jpg,Size?,2 cm\n'),
    "llava": ("llava.json", json.dumps([CONVERSATION, {**CONVERSATION, "id": "r2"}]).encode()),
    "plm": ("plm.jsonl", b"".join(json.dumps({**CONVERSATION, "conversations": [
        {"from": "human", "value": "<image>\nQ?"}, {"from": "assistant", "value": "A."}]}).encode() + b"\n"
        for _ in range(2))),
    "sharegpt": ("data.json", SHAREGPT_BASE),
}


@fuzz(EXAMPLES["converters"])
@given(dataset=st.sampled_from(sorted(SOURCES)), data=st.data())
def test_fuzz_converter_inputs(dataset, data):
    name, base = SOURCES[dataset]
    content = data.draw(mutated(base))
    convert = load_script("tools/convert_to_sharegpt.py")
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "source"
        folder.mkdir()
        (folder / name).write_bytes(content)
        source = folder if dataset in ("vqarad", "slake") else folder / name
        output = Path(root) / "out" / "converted.json"
        extra = ["--split", "train", "--lang", "both"] if dataset == "slake" else []
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = convert.main(["--dataset", dataset, "--input", str(source), "--output", str(output), *extra])
        message = err.getvalue()
        event(f"{dataset}: exit {code}")
        assert code in (0, 2)
        if code == 2:
            assert message.startswith("error: ") and message.count("\n") == 1, message
            assert str(folder) in message, message  # names the input (file, record and field when known)
        else:
            records = json.loads(output.read_text(encoding="utf-8"))
            assert isinstance(records, list)
        assert not (Path(root) / "out").exists() or sorted(p.name for p in (Path(root) / "out").iterdir()) == (
            ["converted.json"] if code == 0 else [])


# --- images -------------------------------------------------------------------------------------


def encoded(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_header_only(width, height, bit_depth=8, color_type=0):
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


NOISE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))


def gif(frames):
    images = [PIL.Image.new("L", (8, 8), value) for value in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=50)
    return buffer.getvalue()


# name -> (file name, bytes, outcome): an RGB image of that size, or the start of the error's reason
IMAGE_CLASSES = {
    "zero_byte": ("empty.png", b"", "cannot decode image"),
    "truncated_png": ("cut.png", encoded(NOISE, "PNG")[:200], "cannot decode image"),
    "truncated_jpeg": ("cut.jpg", encoded(NOISE, "JPEG")[:300], "cannot decode image"),
    "huge_header_no_data": ("huge.png", png_header_only(60_000, 60_000), "image too large: 3600000000 pixels exceeds max_image_pixels=1000000"),
    "65535_square_header": ("max.png", png_header_only(65535, 65535), "image too large: 4294836225 pixels exceeds max_image_pixels=1000000"),
    "65535_x_1": ("wide.png", encoded(PIL.Image.new("L", (65535, 1), 3), "PNG"), (65535, 1)),
    "1_x_65535": ("tall.png", encoded(PIL.Image.new("L", (1, 65535), 3), "PNG"), (1, 65535)),
    "header_without_pixels": ("nodata.png", png_header_only(16, 16), "cannot decode image"),
    "jpeg_named_png": ("photo.png", encoded(NOISE, "JPEG"), (24, 24)),
    "png_named_jpg": ("scan.jpg", encoded(NOISE, "PNG"), (24, 24)),
    "text_named_png": ("notes.png", b"these are notes, not pixels\n" * 4, "cannot decode image"),
    "one_pixel": ("dot.png", encoded(PIL.Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), (1, 1)),
    "animated_gif": ("cine.gif", gif([10, 200, 90]), (8, 8)),
    "sixteen_bit": ("ct.png", encoded(PIL.Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 900), "PNG"),
                    (8, 8)),
    "cmyk_jpeg": ("cmyk.jpg", encoded(PIL.Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG"), (8, 8)),
    "cmyk_tiff": ("cmyk.tif", encoded(PIL.Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "TIFF"), (8, 8)),
    "palette": ("palette.png", encoded(NOISE.convert("P"), "PNG"), (24, 24)),
    "palette_transparent": ("clear.gif", encoded(PIL.Image.new("P", (8, 8), 0), "GIF", transparency=0), (8, 8)),
    "float_tiff": ("float.tif", encoded(PIL.Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)),
                                        "TIFF"), (8, 8)),
}


@pytest.mark.parametrize("name", sorted(IMAGE_CLASSES))
def test_image_classes(tmp_path, name):
    file_name, data, outcome = IMAGE_CLASSES[name]
    path = tmp_path / file_name
    path.write_bytes(data)
    if isinstance(outcome, tuple):
        image = load_image(path, MAX_PIXELS)
        assert (image.mode, image.size) == ("RGB", outcome)
    else:
        with pytest.raises(ImageLoadError) as caught:
            load_image(path, MAX_PIXELS)
        assert str(caught.value).startswith(outcome) and str(path) in str(caught.value)


def test_image_classes_through_the_dataset_are_counted_skips(tmp_path, tiny_tokenizer):
    records = []
    for name in sorted(IMAGE_CLASSES):
        file_name, data, _ = IMAGE_CLASSES[name]
        (tmp_path / file_name).write_bytes(data)
        records.append(record(f"What is {name}?", "this", image=file_name))
    source = tmp_path / "data.json"
    source.write_text(json.dumps(records))
    dataset = ShareGPTImageDataset(str(source), MedcapTransform(tiny_tokenizer, 4, 256), skip_bad_records=True,
                                   max_image_pixels=MAX_PIXELS)
    bad = [name for name in sorted(IMAGE_CLASSES) if not isinstance(IMAGE_CLASSES[name][2], tuple)]
    assert [error.index for error in dataset.skipped] == [sorted(IMAGE_CLASSES).index(name) for name in bad]
    assert all(error.field == "image" for error in dataset.skipped) and len(dataset) == len(IMAGE_CLASSES) - len(bad)
    report = validate_files([str(source)], progress=False, max_image_pixels=MAX_PIXELS)
    assert sorted(issue.record for issue in report.errors) == [error.index for error in dataset.skipped]


IMAGE_BASES = [encoded(NOISE, "PNG"), encoded(NOISE, "JPEG"), gif([10, 200]), encoded(NOISE, "TIFF"),
               encoded(NOISE, "BMP"), encoded(NOISE, "WEBP"),
               encoded(PIL.Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8)), "PNG")]


@fuzz(EXAMPLES["images"])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@given(data=st.one_of(*[mutated(base) for base in IMAGE_BASES]), suffix=st.sampled_from([".png", ".jpg", ".gif"]))
def test_fuzz_image_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / f"image{suffix}"
        path.write_bytes(data)
        try:
            image = load_image(path, MAX_PIXELS)
        except ImageLoadError as error:
            assert str(path) in str(error)
            event(f"ImageLoadError: {str(error).split(': ')[1] if ': ' in str(error) else str(error)}"[:60])
            return
        event("loads as RGB")
        assert image.mode == "RGB" and image.size[0] * image.size[1] <= MAX_PIXELS


@pytest.mark.parametrize("error", [IndexError("tile index out of range"), struct.error("unpack requires 4 bytes"),
                                   EOFError(), MemoryError()])
def test_any_decoder_exception_is_an_image_load_error(tmp_path, monkeypatch, error):
    # the image fuzz met an IndexError raised inside PIL; every exception type reads the same way
    import PIL.ImageFile

    PIL.Image.new("L", (4, 4)).save(tmp_path / "a.png")

    def broken_load(self):
        raise error

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageLoadError) as caught:
        load_image(tmp_path / "a.png")
    reason = "out of memory while decoding" if isinstance(error, MemoryError) else f"{type(error).__name__}: {error}"
    assert str(caught.value) == f"cannot decode image {tmp_path / 'a.png'}: {reason}"
