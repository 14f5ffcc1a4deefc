"""The demo path end to end on CPU with the real frozen SmolLM2: a few steps, generation, scoring.

The same commands as ``make demo`` on a tiny synthetic set (12 images) and 2 training steps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from helpers import REPO_ROOT

TUNE = str(Path(sys.executable).parent / "tune")


def _run(command, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def test_demo_pipeline_trains_generates_and_scores(smollm2_dir, tmp_path):
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    _run([sys.executable, "tools/make_synthetic_vqa.py", "--output", str(data_dir), "--num-images", "12"])
    _run([TUNE, "run", "recipes/full_finetune_single_device.py", "--config",
          "recipes/configs/medcap/smollm2_135M_synthetic_cpu.yaml", f"llm_dir={smollm2_dir}", f"data_dir={data_dir}",
          f"output_dir={run_dir}", "max_steps_per_epoch=2", "batch_size=2", "log_every_n_steps=1"])
    losses = [float(line.split("loss:")[1].split()[0]) for log in (run_dir / "logs").glob("log_*.txt")
              for line in log.read_text().splitlines() if "loss:" in line]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    assert (run_dir / "epoch_0/image_encoder.safetensors").is_file()

    _run([TUNE, "run", "recipes/generate.py", "--config", "recipes/configs/medcap/generate_smollm2_synthetic_cpu.yaml",
          f"run_dir={run_dir}", f"data_dir={data_dir}", "dataset.max_samples=6", "max_new_tokens=6", "meteor=False",
          f"dataset.source={data_dir}/train.json"])
    table = json.loads((run_dir / "eval/metrics_by_epoch.json").read_text())
    assert [row["checkpoint"] for row in table] == ["base", "epoch_0"]
    predictions = pd.read_csv(run_dir / "eval/epoch_0/predictions.csv", keep_default_na=False)
    assert len(predictions) == 6 and predictions["prediction"].str.len().gt(0).all()
    assert all(row["n_vqa"] + row["n_caption"] == 6 for row in table)

    summary = _run([sys.executable, "tools/demo_summary.py", "--run-dir", str(run_dir), "--data-dir", str(data_dir)])
    assert "majority baseline" in summary.stdout and "epoch_0" in summary.stdout
    assert (run_dir / "eval/results.md").is_file() and (run_dir / "eval/loss.png").is_file()
