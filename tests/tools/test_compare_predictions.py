"""tools/compare_predictions.py end to end: two small CSVs in, paired differences, McNemar and flips out."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "compare_predictions.py"
HEADER = ["id", "image", "question", "reference", "answer_type", "question_type", "prediction"]

# 12 questions on 6 images. A (base) is right on ids 1-6; B (tuned) loses id 2 and gains ids 7-10.
QUESTIONS = [
    (f"q{i}", f"img{(i - 1) // 2}.png", f"Question {i}?", "yes" if i % 2 else "liver",
     "CLOSED" if i % 2 else "OPEN", "PRES" if i % 2 else "ORGAN")
    for i in range(1, 13)
]
A_RIGHT = {1, 2, 3, 4, 5, 6}
B_RIGHT = {1, 3, 4, 5, 6, 7, 8, 9, 10}


def _prediction(reference, right):
    if right:
        return reference
    return "no" if reference == "yes" else "spleen"


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def _table(right, order=None):
    rows = [(ident, image, question, reference, answer_type, question_type,
             _prediction(reference, int(ident[1:]) in right))
            for ident, image, question, reference, answer_type, question_type in QUESTIONS]
    return [rows[i] for i in order] if order else rows


def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def _tool():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import compare_predictions
    finally:
        sys.path.pop(0)
    return compare_predictions


def _hand_mcnemar(b, c):
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)


def test_cli_end_to_end(tmp_path):
    a = _write(tmp_path / "base.csv", _table(A_RIGHT))
    b = _write(tmp_path / "tuned.csv", _table(B_RIGHT, order=list(reversed(range(12)))))  # other row order
    out = tmp_path / "comparison.json"
    result = run(a, b, "--protocol", "exact", "--json", out)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "12 questions matched by id" in text and "resampled by image (6 images for 12 questions)" in text
    line = next(line for line in text.splitlines() if line.startswith("exact_match "))
    fields = line.split()
    # n, A = 6/12, B = 9/12, B - A = +25, CI, McNemar p, right->wrong 1, wrong->right 4
    assert fields[1:5] == ["12", "50.00", "75.00", "+25.00"]
    assert fields[-2:] == ["1", "4"]
    assert float(fields[-3]) == pytest.approx(_hand_mcnemar(1, 4), abs=1e-4)  # 0.375
    assert "questions that flipped on exact_match: 1 right->wrong, 4 wrong->right" in text
    assert "  q2 | Question 2? | reference: liver | A: liver | B: spleen" in text
    assert "closed_accuracy/question_type=PRES" not in text  # breakdowns only with --all-keys

    saved = json.loads(out.read_text())
    assert saved["matched_by"] == "id" and saved["bootstrap"]["resampled"] == "image"
    records = {record["metric"]: record for record in saved["metrics"]}
    exact = records["exact_match"]
    assert (exact["a"], exact["b"], exact["difference"], exact["n"], exact["n_clusters"]) == (50.0, 75.0, 25.0, 12, 6)
    assert exact["ci_low"] <= 25.0 <= exact["ci_high"]
    assert exact["mcnemar_p"] == pytest.approx(0.375)
    assert saved["flips"]["exact_match"] == {"right_to_wrong": ["q2"], "wrong_to_right": ["q7", "q8", "q9", "q10"]}
    assert saved["flips"]["closed_accuracy"] == {"right_to_wrong": [], "wrong_to_right": ["q7", "q9"]}
    assert saved["flips"]["open_exact_match"] == {"right_to_wrong": ["q2"], "wrong_to_right": ["q8", "q10"]}
    assert "closed_accuracy/question_type=PRES" in records  # the JSON holds every key
    assert saved["rows"]["q7"] == {"question": "Question 7?", "reference": "yes", "a": "no", "b": "yes"}


def test_refuses_files_that_are_not_the_same_questions(tmp_path):
    a = _write(tmp_path / "a.csv", _table(A_RIGHT))
    changed = _table(B_RIGHT)
    changed[4] = changed[4][:2] + ("Another question?",) + changed[4][3:]
    b = _write(tmp_path / "b.csv", changed)
    result = run(a, b)
    assert result.returncode == 1 and result.stdout == ""
    assert "a.csv and" in result.stderr and "b.csv are not the same questions" in result.stderr
    assert "row 5 (id 'q5'): question 'Question 5?'" in result.stderr

    compare = _tool()
    fewer = _write(tmp_path / "fewer.csv", _table(B_RIGHT)[:10])
    with pytest.raises(ValueError, match=r"fewer.csv are not the same questions: .*2 id\(s\) only in .*a.csv"):
        compare.compare_files(a, fewer)
    other_reference = _table(B_RIGHT)
    other_reference[0] = other_reference[0][:3] + ("no",) + other_reference[0][4:]
    with pytest.raises(ValueError, match="reference 'yes' in .*a.csv, 'no' in"):
        compare.compare_files(a, _write(tmp_path / "ref.csv", other_reference))
    # without ids rows are matched by position: a different row count is refused
    no_ids = _write(tmp_path / "no_ids.csv", [row[1:] + ("",) for row in _table(A_RIGHT)])
    text = no_ids.read_text().replace("id,image", "image", 1).replace(",prediction", ",prediction,x", 1)
    no_ids.write_text(text)
    short = tmp_path / "short.csv"
    short.write_text("\n".join(text.splitlines()[:5]) + "\n")
    with pytest.raises(ValueError, match=r"12 rows in .*no_ids.csv, 4 in .*short.csv"):
        compare.compare_files(no_ids, short)
    with pytest.raises(FileNotFoundError, match="absent.csv: no such file"):
        compare.compare_files(a, tmp_path / "absent.csv")


def test_identical_files_and_well_formed(tmp_path):
    compare = _tool()
    a = _write(tmp_path / "a.csv", _table(A_RIGHT))
    train = tmp_path / "train.json"
    train.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": answer}],
         "answer_type": answer_type, "question_type": question_type}
        for answer, answer_type, question_type in [("yes", "CLOSED", "PRES"), ("no", "CLOSED", "PRES"),
                                                   ("liver", "OPEN", "ORGAN")]
    ]))
    result = compare.compare_files(a, a, protocols=["exact"], train_json=train)
    records = {record["metric"]: record for record in result["metrics"]}
    for record in records.values():
        assert record["difference"] == 0.0 and record["ci_low"] in (0.0, None) and record["ci_high"] in (0.0, None)
    assert records["exact_match"]["mcnemar_p"] == 1.0  # no discordant question
    assert records["well_formed"]["a"] == pytest.approx(100 * 9 / 12)  # "spleen" is not a trained form
    assert result["flips"]["well_formed"] == {"right_to_wrong": [], "wrong_to_right": []}
    text = compare.format_report(result, all_keys=True)
    assert "well_formed/question_type=ORGAN" in text and "questions that flipped on exact_match: 0" in text


def test_paired_interval_is_narrower_than_separate_intervals(tmp_path):
    # B agrees with A on all but 5 of 200 questions: the paired interval of B - A is far narrower
    # than the one the two separate intervals would suggest
    compare = _tool()
    rows_a, rows_b = [], []
    for i in range(200):
        right_a = i % 2 == 0
        right_b = right_a if i >= 5 else not right_a
        base = (f"q{i}", f"img{i}.png", f"Question {i}?", "yes", "CLOSED", "PRES")
        rows_a.append(base + (_prediction("yes", right_a),))
        rows_b.append(base + (_prediction("yes", right_b),))
    a, b = _write(tmp_path / "a.csv", rows_a), _write(tmp_path / "b.csv", rows_b)
    result = compare.compare_files(a, b, protocols=["exact"])
    record = next(r for r in result["metrics"] if r["metric"] == "closed_accuracy")
    paired_width = record["ci_high"] - record["ci_low"]
    separate = 1.96 * math.sqrt(2 * 0.25 / 200) * 100 * 2  # width of a difference of two independent rates
    assert paired_width < separate / 3
    assert result["bootstrap"]["resampled"] == "question"  # one question per image


def test_format_lists_at_most_max_flips(tmp_path):
    compare = _tool()
    result = compare.compare_files(_write(tmp_path / "a.csv", _table(A_RIGHT)), _write(tmp_path / "b.csv", _table(B_RIGHT)),
                                   protocols=["exact"])
    text = compare.format_report(result, max_flips=2)
    assert "  ... 2 more (--max-flips, or --json for all)" in text
