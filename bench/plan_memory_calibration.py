"""Check tools/plan_memory.py's activation model against measured peaks: SmolLM2-135M size on CPU, three batch sizes.

Usage::

    taskset -c 0 env OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/plan_memory_calibration.py \\
        [--config recipes/configs/medcap/smollm2_135M_synthetic_cpu.yaml] [--batch-sizes 2 4 8] [--seq-len 128]

Each batch size runs in a fresh process: the config's model with its frozen SmolLM2 loaded, one warm-up
training step (AdamW state allocated), then the measured step on a full batch (``batch x seq_len``
tokens, images, the last quarter of each sequence labelled). Measured = the process's peak resident
memory during the step (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus the
resident memory before it (weights, optimizer state, libraries); glibc is told to return large
blocks at once (``MALLOC_MMAP_THRESHOLD_``) so resident memory follows the tensors. Predicted = the
planner's activations + gradients for the same shapes (``--label-fraction 0.25``). Prints a table and
the largest relative error; exit 1 above 15%.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(config: str, batch_size: int, seq_len: int, overrides) -> dict:
    """One measured step in this process (run by the parent in a fresh subprocess)."""
    import ctypes
    import gc

    import torch
    from omegaconf import OmegaConf
    from torchtune import training

    from medcap import config as medcap_config
    from medcap.checkpoint.decoder import load_frozen_decoder
    from medcap.models import set_train_mode, set_trainable

    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(list(overrides)))
    torch.manual_seed(0)
    with training.set_default_dtype(torch.float32):
        model = medcap_config.instantiate(cfg.model)
    load_frozen_decoder(cfg.checkpointer, model.decoder)
    names = set_trainable(model, cfg.get("trainable", "encoder_and_projector"))
    set_train_mode(model)
    params = [p for n, p in model.named_parameters() if n in set(names)]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = medcap_config.instantiate(cfg.loss)
    k = model.num_image_tokens
    size = cfg.model_transform.image_transform.image_size
    tokens = torch.randint(3, 1000, (batch_size, seq_len), generator=torch.Generator().manual_seed(1))
    tokens[:, 1:1 + k] = model.image_token_id
    labels = torch.full_like(tokens, -100)
    labels[:, -seq_len // 4:] = tokens[:, -seq_len // 4:]
    images = torch.randn(batch_size, 3, size, size)

    def step():
        hidden = model(tokens, images=images)
        loss, count = loss_fn(hidden, labels, model.lm_head)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state
    del_hint = gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    step()
    peak = _status_kib("VmHWM")
    return {"batch_size": batch_size, "seq_len": seq_len, "measured_bytes": (peak - before) * 1024, "baseline_bytes": before * 1024, "_": del_hint}


def predict(config: str, batch_size: int, seq_len: int, overrides) -> int:
    from omegaconf import OmegaConf

    sys.path.insert(0, str(ROOT / "tools"))
    from plan_memory import plan_from_config

    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(list(overrides) + [f"batch_size={batch_size}", f"model_transform.max_seq_len={seq_len}", "dtype=fp32", "optimizer_in_bwd=False"]))
    plan = plan_from_config(cfg, label_fraction=0.25)
    return sum(v for key, v in plan.rows.items() if key.startswith(("activations", "gradients")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="recipes/configs/medcap/smollm2_135M_synthetic_cpu.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config key=value overrides (e.g. llm_dir=...)")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.config, args.child, args.seq_len, args.overrides)))
        return 0
    rows, worst = [], 0.0
    for batch_size in args.batch_sizes:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, __file__, "--config", args.config, "--seq-len", str(args.seq_len), "--child", str(batch_size), *args.overrides],
                             capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        predicted = predict(args.config, batch_size, args.seq_len, args.overrides)
        error = predicted / measured["measured_bytes"] - 1
        worst = max(worst, abs(error))
        rows.append((batch_size, measured["measured_bytes"], predicted, error))
    print(f"| batch x tokens | measured step peak above baseline (MiB) | planner: activations + gradients (MiB) | error |")
    print("| --- | ---: | ---: | ---: |")
    for batch_size, measured, predicted, error in rows:
        print(f"| {batch_size} x {args.seq_len} | {measured / 2**20:.0f} | {predicted / 2**20:.0f} | {error * 100:+.1f}% |")
    print(f"largest error: {worst * 100:.1f}% (limit 15%)")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
