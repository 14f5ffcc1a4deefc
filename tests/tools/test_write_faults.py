"""Full disks, read-only folders and an output that is the input (issues 14, 16.2, 16.8).

Faults are injected two ways: a patched write raising the OS error (always), and a real 64 kB
tmpfs mounted in a private mount namespace (``unshare -rm``; skipped where unavailable). Every
fault ends in one clear message naming the final path (never a hidden temporary file) and the
bytes needed, with the previous file intact and nothing partial left beside it.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from helpers import REPO_ROOT, load_script
from medcap.generation.judge_csv import judge_csv, read_judged
from medcap.metrics.judge import build_judge_prompt
from medcap.utils import atomic
from medcap.utils.atomic import WriteError, atomic_directory, atomic_write, atomic_write_json, atomic_write_text

ROWS = [(f"Is there finding {i}?", "yes" if i % 2 else "no", "yes") for i in range(7)]


def disk_full_after(limit):
    """A ``write`` for atomic_write that writes ``limit`` bytes, then fails as a full disk does."""
    def write(temp):
        with open(temp, "wb") as handle:
            handle.write(b"x" * limit)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


# --- medcap/utils/atomic.py ---------------------------------------------------------------------


def test_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "recipe_state.pt"
    target.write_bytes(b"good")
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 512)
    with pytest.raises(WriteError) as caught:
        atomic_write(target, disk_full_after(4096))
    assert str(caught.value) == (
        f"cannot write {target}: no space left on device (ENOSPC); needs more than the 4,096 bytes written "
        "before the failure, 512 bytes free there; the previous file is unchanged")
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"good" and leftovers(tmp_path) == []


def test_known_size_is_refused_before_writing_when_it_cannot_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 10)
    with pytest.raises(WriteError) as caught:
        atomic_write_text(tmp_path / "out.json", "x" * 11)
    assert str(caught.value) == (f"cannot write {tmp_path / 'out.json'}: no space left on device (ENOSPC); "
                                 "needs 11 bytes, 10 bytes free there; no partial file was left")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("error, free, reason", [
    # torch.save's C++ writer loses the errno: a nearly full disk says which it was
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), 0,
     "no space left on device (ENOSPC)"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), 10**12,
     "the write failed ([enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598)"),
    # safetensors (Rust) keeps the errno in its text
    (Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)"), 0,
     "disk quota exceeded (EDQUOT)"),
])
def test_library_write_failures_are_recognised(tmp_path, monkeypatch, error, free, reason):
    monkeypatch.setattr(atomic, "free_bytes", lambda path: free)

    def write(temp):
        raise error

    with pytest.raises(WriteError) as caught:
        atomic_write(tmp_path / "model.safetensors", write)
    assert str(caught.value).startswith(f"cannot write {tmp_path / 'model.safetensors'}: {reason}")
    assert caught.value.__cause__ is error and os.listdir(tmp_path) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(tmp_path / "x.json", [object()])
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_names_the_target_not_the_temp_file(tmp_path, monkeypatch):
    def refuse(*args, dir=None, prefix="", suffix=""):  # what mkstemp raises in a folder without write permission
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, prefix + "k2j3" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(WriteError) as caught:
        atomic_write_json(tmp_path / "out.json", [1])
    assert str(caught.value) == f"cannot write {tmp_path / 'out.json'}: permission denied (EACCES); no partial file was left"
    assert ".tmp" not in str(caught.value)


def test_folder_written_whole_names_the_folder_and_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 0)
    epoch = tmp_path / "epoch_2"
    with pytest.raises(WriteError) as caught:
        with atomic_directory(epoch) as staging:
            atomic_write(staging / "image_encoder.safetensors", lambda temp: Path(temp).write_bytes(b"w" * 100))
            atomic_write(staging / "recipe_state.pt", disk_full_after(50))
    assert str(caught.value) == (f"cannot write {epoch}: no space left on device (ENOSPC) while writing "
                                 "recipe_state.pt; needs more than the 100 bytes written before the failure, "
                                 "0 bytes free there; no partial folder was left")
    assert os.listdir(tmp_path) == []


# --- tools/convert_to_sharegpt.py ---------------------------------------------------------------


def convert(*args):
    return load_script("tools/convert_to_sharegpt.py").main([*map(str, args)])


def sharegpt_file(path, n=3):
    rows = [{"conversations": [{"from": "human", "value": f"Q{i}?"}, {"from": "gpt", "value": f"A{i}"}]}
            for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


def test_output_equal_to_the_input_is_refused(tmp_path, capsys):
    source = sharegpt_file(tmp_path / "train.json")
    before = source.read_bytes()
    for output in (source, tmp_path / "." / "train.json"):
        assert convert("--dataset", "sharegpt", "--input", source, "--output", output, "--to", "llava") == 2
        assert f"is the input file {source}: converting would overwrite the input" in capsys.readouterr().err
    os.link(source, tmp_path / "hardlink.json")
    os.symlink(source, tmp_path / "symlink.json")
    for output in ("hardlink.json", "symlink.json"):
        assert convert("--dataset", "sharegpt", "--input", source, "--output", tmp_path / output) == 2
    assert source.read_bytes() == before
    # a {split} name that lands on the input, and a file inside an input dataset folder
    assert convert("--dataset", "sharegpt", "--input", source, "--split", "train",
                   "--output", tmp_path / "{split}.json") == 2
    slake = tmp_path / "slake"
    slake.mkdir()
    sharegpt_file(slake / "test.json")
    assert convert("--dataset", "slake", "--input", slake, "--output", slake / "test.json") == 2
    assert "is a file of the input dataset folder" in capsys.readouterr().err
    assert source.read_bytes() == before
    assert convert("--dataset", "sharegpt", "--input", source, "--output", tmp_path / "copy.json") == 0


def test_converting_into_an_unwritable_folder_names_the_target(tmp_path, capsys, monkeypatch):
    source = sharegpt_file(tmp_path / "train.json")

    def refuse(*args, dir=None, prefix="", suffix=""):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, prefix + "abc" + suffix))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert convert("--dataset", "sharegpt", "--input", source, "--output", tmp_path / "out.json") == 2
    assert capsys.readouterr().err == (f"error: cannot write {tmp_path / 'out.json'}: read-only file system (EROFS); "
                                       "no partial file was left\n")


def test_converter_on_a_full_disk_keeps_the_previous_output(tmp_path, capsys, monkeypatch):
    source = sharegpt_file(tmp_path / "train.json", n=50)
    output = tmp_path / "out.json"
    output.write_text("[]\n")
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 1000)
    assert convert("--dataset", "sharegpt", "--input", source, "--output", output) == 2
    err = capsys.readouterr().err
    size = len((json.dumps(json.loads(source.read_text()), indent=2) + "\n").encode())
    assert err == (f"error: cannot write {output}: no space left on device (ENOSPC); needs {size:,} bytes, "
                   "1,000 bytes free there; the previous file is unchanged\n")
    assert output.read_text() == "[]\n" and leftovers(tmp_path) == []


# --- the judge's resumable CSV ------------------------------------------------------------------


class EchoJudge:
    """Replies RIGHT when the prediction is the reference (a deterministic judge)."""

    max_new_tokens, max_seq_len = 4, None

    def encode(self, prompt):
        return list(prompt.encode())

    def reply(self, prompts, candidates):
        return ["RIGHT" if bytes(p).decode().count("yes") >= 2 else "WRONG" for p in prompts]


def predictions(path):
    pd.DataFrame(ROWS, columns=["question", "prediction", "reference"]).to_csv(path, index=False)
    return path


class FullDiskFile:
    """An append handle that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, path, mode):
        self.handle = open(path, mode)

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_judge_csv_on_a_full_disk_keeps_whole_rows_and_resumes(tmp_path, monkeypatch):
    judge_module = sys.modules["medcap.generation.judge_csv"]  # the package exports a function of that name

    source = predictions(tmp_path / "p.csv")
    reference = tmp_path / "reference.csv"
    judge_csv(source, reference, EchoJudge(), batch_size=2)
    output = tmp_path / "j.csv"
    judge_csv(source, output, EchoJudge(), batch_size=2, max_rows=4)
    before = output.read_bytes()
    monkeypatch.setattr(judge_module, "open", FullDiskFile, raising=False)
    monkeypatch.setattr(judge_module, "free_bytes", lambda path: 0)
    with pytest.raises(WriteError) as caught:
        judge_csv(source, output, EchoJudge(), batch_size=2)
    message = str(caught.value)
    assert message.startswith(f"cannot write {output}: no space left on device (ENOSPC) while appending 2 judged rows; "
                              "needs ")
    assert message.endswith(" bytes, 0 bytes free there; the previous file is unchanged")
    assert output.read_bytes() == before  # the half-written batch was cut off
    monkeypatch.undo()
    summary = judge_csv(source, output, EchoJudge(), batch_size=2)
    assert (summary["already_judged"], summary["judged_this_run"]) == (4, 3)
    assert output.read_bytes() == reference.read_bytes()


def test_recipe_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    recipe = load_script("recipes/llm_judge.py")

    class Failing:
        def __init__(self, cfg):
            raise WriteError(tmp_path / "j.csv", "no space left on device", error_number=errno.ENOSPC,
                             bytes_needed=10, bytes_free=0)

    monkeypatch.setattr(recipe, "LLMJudgeRecipe", Failing)
    monkeypatch.setattr(sys, "argv", ["llm_judge.py", "--config", str(REPO_ROOT / "recipes/configs/medcap/judge_tiny_cpu.yaml")])
    with pytest.raises(SystemExit) as exited:
        recipe.recipe_main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (f"error: cannot write {tmp_path / 'j.csv'}: no space left on device (ENOSPC); "
                                       "needs 10 bytes, 0 bytes free there; no partial file was left\n")


# --- a real full disk and a real read-only folder -----------------------------------------------

REAL_DISK = r'''
import json, os, sys
sys.path.insert(0, sys.argv[2])
import torch
from safetensors.torch import save_file
from medcap.utils.atomic import WriteError, atomic_write, atomic_write_json
folder = sys.argv[1]
keep = os.path.join(folder, "keep.pt")
atomic_write(keep, lambda temp: torch.save({"w": torch.ones(3)}, temp))
good = open(keep, "rb").read()
results = {}
for name, write in [
    ("torch", lambda: atomic_write(keep, lambda temp: torch.save({"w": torch.zeros(100_000)}, temp))),
    ("safetensors", lambda: atomic_write(os.path.join(folder, "w.safetensors"),
                                         lambda temp: save_file({"w": torch.zeros(100_000)}, temp))),
    ("json", lambda: atomic_write_json(os.path.join(folder, "big.json"), ["x" * 100_000])),
]:
    try:
        write()
        results[name] = "written"
    except WriteError as error:
        results[name] = str(error)
results["kept"] = open(keep, "rb").read() == good
results["files"] = sorted(os.listdir(folder))
print(json.dumps(results))
'''


def in_tiny_tmpfs(script, *args, read_only=False, python=sys.executable):
    """Run ``python -c script MOUNT REPO *args`` with a 64 kB tmpfs at MOUNT (a private mount namespace)."""
    if shutil.which("unshare") is None or sys.platform != "linux":
        pytest.skip("unshare is not available")
    mount = tempfile.mkdtemp(prefix="medcap_tmpfs_")
    try:
        remount = f" && mount -o remount,ro {mount}" if read_only else ""
        command = (f"mount -t tmpfs -o size=64k tmpfs {mount}{remount} && exec " +
                   " ".join(map(_quote, [python, "-c", script, mount, str(REPO_ROOT), *args])))
        result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                                cwd=REPO_ROOT)
        if "mount:" in result.stderr or "unshare:" in result.stderr:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
        return result, mount
    finally:
        os.rmdir(mount)


def _quote(text):
    import shlex

    return shlex.quote(text)


def test_real_full_disk_for_torch_safetensors_and_json():
    result, mount = in_tiny_tmpfs(REAL_DISK)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["torch"].startswith(f"cannot write {mount}/keep.pt: no space left on device (ENOSPC); needs more "
                                     "than the ")
    assert found["torch"].endswith("; the previous file is unchanged")
    assert found["safetensors"].startswith(f"cannot write {mount}/w.safetensors: no space left on device (ENOSPC)")
    assert found["json"].startswith(f"cannot write {mount}/big.json: no space left on device (ENOSPC); needs 100,")
    assert found["kept"] is True and found["files"] == ["keep.pt"]  # nothing partial, no temp files


@pytest.mark.parametrize("read_only", [False, True], ids=["full", "read_only"])
def test_real_converter_into_a_full_or_read_only_disk(tmp_path, read_only):
    source = sharegpt_file(tmp_path / "train.json", n=2000)  # ~200 kB of JSON: more than the 64 kB disk
    os.environ["MEDCAP_TOOL"] = str(REPO_ROOT / "tools" / "convert_to_sharegpt.py")
    script = ("import os, sys, runpy; sys.argv = ['convert_to_sharegpt.py', '--dataset', 'sharegpt', '--input', "
              "sys.argv[3], '--output', os.path.join(sys.argv[1], 'out', 'data.json')]; "
              "runpy.run_path(os.environ['MEDCAP_TOOL'], run_name='__main__')")
    result, mount = in_tiny_tmpfs(script, str(source), read_only=read_only)
    assert result.returncode == 2, result.stderr[-2000:]
    target = f"{mount}/out/data.json"
    if read_only:
        assert result.stderr == (f"error: cannot write {target}: read-only file system (EROFS) while creating the "
                                 f"folder {mount}/out; no partial file was left\n")
    else:
        assert result.stderr.startswith(f"error: cannot write {target}: no space left on device (ENOSPC); needs ")
        assert "Traceback" not in result.stderr and ".tmp" not in result.stderr
