"""recipes/llm_judge.py under faults: a run stopped after k rows (an exception, a real ``kill -9``,
also in the middle of a write) resumes without judging a finished row again, and its final CSV
equals an uninterrupted run's byte for byte; an output of other predictions is refused."""

import csv
import io
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from helpers import REPO_ROOT
from medcap.generation.judge_csv import judge_csv

TINY_CONFIG = "recipes/configs/medcap/judge_tiny_cpu.yaml"
ROWS = [(f"Is finding {i} present?", ["yes", "no", "yes, clearly", 'a "quoted",\nanswer'][i % 4], "yes")
        for i in range(11)]


def write_predictions(path, rows=ROWS):
    pd.DataFrame(rows, columns=["question", "prediction", "reference"]).to_csv(path, index=False)
    return path


class Interrupted(Exception):
    pass


class CountingJudge:
    """A deterministic judge (RIGHT when the prediction starts with "yes") that can fail after k replies."""

    max_new_tokens, max_seq_len = 4, None

    def __init__(self, fail_after=None):
        self.fail_after, self.replied = fail_after, []

    def encode(self, prompt):
        return list(prompt.encode())

    def reply(self, prompts, candidates):
        texts = [bytes(tokens).decode() for tokens in prompts]
        if self.fail_after is not None and len(self.replied) + len(texts) > self.fail_after:
            raise Interrupted(f"stopped after {len(self.replied)} rows")
        self.replied += texts
        return ["RIGHT" if "Our answer: yes" in text else "WRONG" for text in texts]


@pytest.mark.parametrize("fail_after, batch_size", [(0, 3), (1, 1), (4, 2), (9, 3), (10, 1)])
def test_interrupted_run_resumes_to_the_uninterrupted_file(tmp_path, fail_after, batch_size):
    source = write_predictions(tmp_path / "p.csv")
    judge_csv(source, tmp_path / "reference.csv", CountingJudge(), batch_size=batch_size)
    output = tmp_path / "j.csv"
    first = CountingJudge(fail_after=fail_after)
    with pytest.raises(Interrupted):
        judge_csv(source, output, first, batch_size=batch_size)
    done = len(first.replied)
    assert done == fail_after - fail_after % batch_size  # whole batches were written before the fault
    second = CountingJudge()
    summary = judge_csv(source, output, second, batch_size=batch_size)
    assert (summary["already_judged"], summary["judged_this_run"]) == (done, len(ROWS) - done)
    assert len(second.replied) == len(ROWS) - done and not set(first.replied) & set(second.replied)
    assert output.read_bytes() == (tmp_path / "reference.csv").read_bytes()


def test_output_of_other_predictions_is_refused(tmp_path):
    output = tmp_path / "j.csv"
    judge_csv(write_predictions(tmp_path / "a.csv"), output, CountingJudge(), max_rows=3)
    other = [(question, "no", reference) for question, _, reference in ROWS]  # same questions, new predictions
    with pytest.raises(ValueError) as caught:
        judge_csv(write_predictions(tmp_path / "b.csv", other), output, CountingJudge())
    assert str(caught.value) == (
        f"{output}: row_id 0 was judged for prediction 'yes' but {tmp_path / 'b.csv'} has 'no': the output belongs "
        "to other predictions; use a new output file")
    with pytest.raises(ValueError, match=r"row_id 2 was judged for question .* has no such row"):
        judge_csv(write_predictions(tmp_path / "c.csv", ROWS[:2]), output, CountingJudge())


# --- real processes, real kill -9 ----------------------------------------------------------------

SELF_KILL = r'''
import csv, io, os, runpy, signal, sys
sys.path.insert(0, os.getcwd())
import medcap.generation.judge_csv  # noqa: F401
module = sys.modules["medcap.generation.judge_csv"]
original, after, calls = module._append_rows, int(os.environ["KILL_AFTER_BATCHES"]), [0]

def append(output_path, columns, rows, write_header):
    calls[0] += 1
    if calls[0] <= after:
        return original(output_path, columns, rows, write_header)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writerows(rows)
    data = buffer.getvalue().encode()
    with open(output_path, "ab") as handle:  # half of the batch reaches the disk, then kill -9
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

module._append_rows = append
sys.argv = ["llm_judge.py"] + sys.argv[1:]
runpy.run_path("recipes/llm_judge.py", run_name="__main__")
'''


def judge_command(tiny_assets, predictions, output, *extra):
    return [sys.executable, "recipes/llm_judge.py", "--config", TINY_CONFIG, f"assets_dir={tiny_assets['root']}",
            f"predictions={predictions}", f"output={output}", "batch_size=1", "max_new_tokens=4", *extra]


def run_to_end(command):
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def judged_rows(path):
    """Whole rows on disk (0 while the file is missing or its last record is torn)."""
    try:
        return max(0, sum(1 for _ in csv.reader(io.StringIO(path.read_text()), strict=True)) - 1)
    except (OSError, csv.Error, UnicodeDecodeError):
        return 0


@pytest.mark.slow
def test_kill_9_mid_write_and_at_random_moments_resumes_to_the_uninterrupted_file(tiny_assets, tmp_path):
    source = write_predictions(tmp_path / "p.csv")
    reference = tmp_path / "reference.csv"
    run_to_end(judge_command(tiny_assets, source, reference))
    # 1) killed by SIGKILL in the middle of writing its 5th batch (deterministic)
    output = tmp_path / "mid_write.csv"
    command = judge_command(tiny_assets, source, output)
    killed = subprocess.run([sys.executable, "-c", SELF_KILL, *command[2:]], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "KILL_AFTER_BATCHES": "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not output.read_text().endswith("\n")  # a torn last record is on disk
    resumed = run_to_end(command)
    assert '"already_judged": 4' in resumed.stdout and '"judged_this_run": 7' in resumed.stdout
    assert output.read_bytes() == reference.read_bytes()
    # 2) kill -9 from outside at random moments after some rows are on disk (seeded), twice each
    chooser = random.Random(0)
    for trial in range(2):
        output = tmp_path / f"random_{trial}.csv"
        command = judge_command(tiny_assets, source, output)
        for _ in range(2):
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wanted = judged_rows(output) + 1 + chooser.randrange(3)
            while process.poll() is None and judged_rows(output) < wanted:
                time.sleep(0.005)
            time.sleep(chooser.uniform(0, 0.05))
            process.send_signal(signal.SIGKILL)
            assert process.wait() == -signal.SIGKILL  # killed while judging, not after it finished
        run_to_end(command)
        assert output.read_bytes() == reference.read_bytes(), f"trial {trial}"
