"""tools/score.py end to end: CSV in, one JSON object of percentages out (via subprocess)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCORE = REPO_ROOT / "tools" / "score.py"
REQUIRED_KEYS = (
    "llava_med_open_recall",
    "llava_med_closed_accuracy",
    "closed_accuracy",
    "open_exact_match",
    "bleu1",
    "token_f1",
)

# Per row: exact | LLaVA-Med rule / recall | Med-PaLM BLEU-1 | token F1
#  1 CLOSED PRES  "No" / "No, there is no nodule."  0 | 1        | 1/5 | 1/3
#  2 CLOSED PRES  "Yes" / "The liver looks normal."  0 | 0 ("no" in "normal", no "yes") | 0 | 0
#  3 CLOSED POS   "left" / "left"                    1 | 0 (no yes/no in prediction) | 1 | 1
#  4 OPEN ORGAN   "left lung" / "left left left"     0 | recall 3/4 | 1/3 | 2/5
#  5 OPEN COUNT   "None" / "none"                    1 | 1 (both normalise to "0") | 1 | 1
#  6 OPEN (none)  "NA" / "NA"                        1 | 1         | 1   | 1
CSV_TEXT = (
    "question,reference,prediction,answer_type,question_type\n"
    'Is there a nodule?,No,"No, there is no nodule.",CLOSED,PRES\n'
    "Is the liver normal?,Yes,The liver looks normal.,closed ,PRES\n"
    "Which side?,left,left, CLOSED,POS\n"
    "What organ?,left lung,left left left,OPEN,ORGAN\n"
    "How many lesions?,None,none,Open,COUNT\n"
    "What is abnormal?,NA,NA,OPEN,\n"
)


def run_score(*args, cwd=REPO_ROOT):
    return subprocess.run(
        [sys.executable, str(SCORE), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def write(tmp_path, text, name="predictions.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_end_to_end(tmp_path):
    result = run_score(write(tmp_path, CSV_TEXT), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["closed_accuracy"] == 33.33  # 1 of 3
    assert scores["llava_med_closed_accuracy"] == 33.33  # 1 of 3, every CLOSED row counts
    assert scores["open_exact_match"] == 66.67  # "None"/"none" and "NA"/"NA" are text answers
    assert scores["llava_med_open_recall"] == 91.67  # (3/4 + 1 + 1) / 3
    assert scores["bleu1"] == 58.89  # (1/5 + 0 + 1 + 1/3 + 1 + 1) / 6
    assert scores["token_f1"] == 62.22  # (1/3 + 0 + 1 + 2/5 + 1 + 1) / 6
    assert scores["exact_match"] == 50.0
    assert scores["bleu1/answer_type=CLOSED"] == 40.0
    assert scores["closed_accuracy/question_type=PRES"] == 0.0
    assert scores["llava_med_closed_accuracy/question_type=PRES"] == 50.0
    assert scores["closed_accuracy/question_type=POS"] == 100.0
    assert scores["llava_med_open_recall/question_type=ORGAN"] == 75.0
    assert "llava_med_open_recall/question_type=PRES" not in scores
    assert all(not key.endswith("question_type=") for key in scores)  # empty type = unknown


def test_cli_protocol_selection(tmp_path):
    path = write(tmp_path, CSV_TEXT)
    result = run_score(path, "--protocol", "medpalm")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert {key.split("/")[0] for key in scores} == {"bleu1", "token_f1"}
    result = run_score(path, "--protocol", "llava_med", "--protocol", "exact")
    assert {key.split("/")[0] for key in json.loads(result.stdout)} == {
        "llava_med_open_recall",
        "llava_med_closed_accuracy",
        "closed_accuracy",
        "open_exact_match",
        "exact_match",
    }
    result = run_score(path, "--protocol", "bogus")
    assert result.returncode != 0 and "bogus" in result.stderr


def test_none_and_na_are_text(tmp_path):
    csv = "question,reference,prediction,answer_type\nq1,None,NA,OPEN\nq2,NA,NA,OPEN\nq3,null,,OPEN\n"
    result = run_score(write(tmp_path, csv))
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    # Row 1 is wrong ("none" vs "na"), row 2 right; row 3: reference "null", prediction "".
    assert scores["open_exact_match"] == 33.33
    assert scores["token_f1"] == 33.33
    assert scores["closed_accuracy"] is None  # no CLOSED row -> null
    assert scores["llava_med_closed_accuracy"] is None


def test_header_only_csv_says_there_are_no_rows(tmp_path):
    path = write(tmp_path, "question,reference,prediction,answer_type\n")
    result = run_score(path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {path}: no rows to score (the file holds only the header)\n"


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path, "question,reference,answer_type\nq,yes,CLOSED\n", name="no_pred.csv")
    result = run_score(path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "no_pred.csv" in result.stderr and "missing column 'prediction'" in result.stderr


def test_bad_answer_type_names_the_row(tmp_path):
    csv = "question,reference,prediction,answer_type\nq1,yes,yes,CLOSED\nq2,yes,yes,YES/NO\n"
    result = run_score(write(tmp_path, csv, name="bad_type.csv"))
    assert result.returncode == 1
    assert "bad_type.csv" in result.stderr and "row 2" in result.stderr and "'YES/NO'" in result.stderr


def test_missing_file(tmp_path):
    result = run_score(tmp_path / "absent.csv")
    assert result.returncode == 1 and "absent.csv: no such file" in result.stderr


@pytest.mark.parametrize("protocol", ["all", "llava_med", "exact", "medpalm"])
def test_score_csv_in_process(tmp_path, protocol):
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        from score import score_csv
    finally:
        sys.path.pop(0)
    scores = score_csv(write(tmp_path, CSV_TEXT), protocols=[protocol])
    from medcap.metrics.vqa import PROTOCOL_METRICS

    groups = PROTOCOL_METRICS.values() if protocol == "all" else [PROTOCOL_METRICS[protocol]]
    expected = {metric for metrics in groups for metric in metrics}
    assert {key.split("/")[0] for key in scores} == expected
    if protocol == "all":
        assert set(REQUIRED_KEYS) <= expected
    for value in scores.values():
        assert value is None or (0.0 <= value <= 100.0 and round(value, 2) == value)


# --- --intervals and --by ----------------------------------------------------------------------

# 8 questions on 4 images (2 each); a row's image ties it to its neighbour
IMAGE_CSV = (
    "id,image,question,reference,prediction,answer_type,question_type,modality\n"
    "1,a.png,Is there a nodule?,yes,yes,CLOSED,PRES,CT\n"
    "2,a.png,Which organ?,liver,liver,OPEN,ORGAN,CT\n"
    "3,b.png,Is there a nodule?,no,yes,CLOSED,PRES,MRI\n"
    "4,b.png,Which organ?,lung,liver,OPEN,ORGAN,MRI\n"
    "5,c.png,Is there a mass?,yes,yes,CLOSED,PRES,CT\n"
    "6,c.png,Which side?,left,left,OPEN,POS,CT\n"
    "7,d.png,Is it normal?,no,no,CLOSED,ABN,X-Ray\n"
    "8,d.png,Which side?,right,left,OPEN,POS,X-Ray\n"
)


def test_default_output_has_no_intervals(tmp_path):
    result = run_score(write(tmp_path, IMAGE_CSV))
    scores = json.loads(result.stdout)
    assert "intervals" not in scores and "bootstrap" not in scores
    assert all(value is None or isinstance(value, float) for value in scores.values())  # metric -> value
    assert scores["medevalkit_accuracy"] == 62.5 and scores["medevalkit_closed_accuracy"] == 75.0


def test_intervals_flag(tmp_path):
    path = write(tmp_path, IMAGE_CSV)
    result = run_score(path, "--intervals", "--protocol", "exact")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["closed_accuracy"] == 75.0  # the flat keys stay
    interval = output["intervals"]["closed_accuracy"]
    assert set(interval) == {"value", "ci_low", "ci_high", "n", "n_clusters"}
    assert interval["value"] == 75.0 and interval["n"] == 4 and interval["n_clusters"] == 4
    assert 0.0 <= interval["ci_low"] <= 75.0 <= interval["ci_high"] <= 100.0
    assert output["intervals"]["exact_match"]["n_clusters"] == 4  # 8 questions, 4 images
    assert output["bootstrap"]["resampled"] == "image" and output["bootstrap"]["n_images"] == 4
    assert output["bootstrap"]["seed"] == 0 and output["bootstrap"]["n_resamples"] == 2000
    assert set(output["intervals"]) == {key for key in output if key not in ("intervals", "bootstrap")}
    again = json.loads(run_score(path, "--intervals", "--protocol", "exact").stdout)
    assert again == output  # seeded
    by_question = json.loads(run_score(path, "--intervals", "--protocol", "exact", "--resample", "question").stdout)
    assert by_question["bootstrap"]["resampled"] == "question"
    assert by_question["intervals"]["exact_match"]["n_clusters"] == 8
    # without an image column the unit is the question
    no_image = write(tmp_path, CSV_TEXT, name="no_image.csv")
    assert json.loads(run_score(no_image, "--intervals").stdout)["bootstrap"]["resampled"] == "question"
    failed = run_score(no_image, "--intervals", "--resample", "image")
    assert failed.returncode == 1 and "image" in failed.stderr


def _csv_rows(text):
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def test_by_column(tmp_path):
    path = write(tmp_path, IMAGE_CSV)
    result = run_score(path, "--by", "modality", "--protocol", "exact")
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(result.stdout)
    assert [row["modality"] for row in rows] == ["CT", "MRI", "X-Ray", "(all)"]
    ct, mri, xray, everything = rows
    assert (ct["n"], ct["n_closed"], ct["n_open"]) == ("4", "2", "2")
    assert ct["closed_accuracy"] == "100.0" and ct["open_exact_match"] == "100.0"
    assert mri["closed_accuracy"] == "0.0" and mri["exact_match"] == "0.0"
    assert xray["exact_match"] == "50.0"
    assert everything["n"] == "8" and everything["exact_match"] == "62.5"
    assert "closed_accuracy_ci_low" not in ct
    with_intervals = _csv_rows(run_score(path, "--by", "modality", "--protocol", "exact", "--intervals").stdout)
    ct = with_intervals[0]
    assert ct["resampled"] == "image" and ct["exact_match_n"] == "4"
    assert float(ct["exact_match_ci_low"]) <= 100.0 <= float(ct["exact_match_ci_high"])
    missing = run_score(path, "--by", "organ")
    assert missing.returncode == 1 and "no column 'organ'" in missing.stderr and "predictions.csv" in missing.stderr


def test_by_question_type_counts_every_value(tmp_path):
    rows = _csv_rows(run_score(write(tmp_path, CSV_TEXT), "--by", "question_type", "--protocol", "llava_med").stdout)
    assert [(row["question_type"], row["n"]) for row in rows] == [
        ("", "1"), ("COUNT", "1"), ("ORGAN", "1"), ("POS", "1"), ("PRES", "2"), ("(all)", "6")]
    assert rows[-1]["llava_med_open_recall"] == "91.67"


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\x02\xff\xfe\x00binary", "a binary file (it holds NUL bytes), not a CSV table"),
    (b"question,reference\n\xff\xfeq,a\n", "not UTF-8 text (byte 0xff at offset 19); expected a UTF-8 CSV table"),
    (b'question,reference,prediction,answer_type\n"unterminated,x,y,OPEN\n',
     "line 2: not a readable CSV (unexpected end of data)"),
    (b"question,reference,prediction,answer_type\nq,a,b,OPEN,extra,extra\n",
     "row 1 (data rows counted from 1 after the header) has 6 fields, the header 4 "
     "(question, reference, prediction, answer_type); quote cells holding commas"),
    (b"question,question,reference,prediction,answer_type\nq,q,a,b,OPEN\n",
     "the header names column 'question' more than once"),
])
def test_malformed_or_binary_csv_names_the_file(tmp_path, content, message):
    path = tmp_path / "predictions.csv"
    path.write_bytes(content)
    result = run_score(path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {path}: {message}\n"


def test_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_bytes(b"\xef\xbb\xbf" + CSV_TEXT.encode())
    result = run_score(path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["closed_accuracy"] == 33.33
