"""Training step time and memory with the frozen SmolLM2 decoder in fp32, nf4 and int8 (and the bitsandbytes alternatives), one run.

Usage::

    taskset -c 0 env OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/quantized_decoder.py \\
        [--config recipes/configs/medcap/smollm2_135M_synthetic_cpu.yaml] [--variants fp32 nf4 int8 bnb_nf4 bnb_int8] \\
        [--batch-size 4] [--seq-len 64] [--steps 4] [llm_dir=...]

Memory: each variant in a fresh process (allocations >= 64 KiB mmapped, so the resident set follows the
live tensors). Time: all variants loaded in one more process, one step of each per round, the order
alternating (ABC, CBA, ...), medians over ``--steps`` rounds. The model: the demo config's (small CNN tower + MLP projector, trainable) with the frozen
SmolLM2-135M loaded as ``decoder_quantization`` says (``bnb_nf4`` / ``bnb_int8``: bitsandbytes
``Linear4bit`` / ``Linear8bitLt(threshold=6)``, the measured alternatives), a fixed batch of
``batch x seq_len`` tokens (the last quarter labelled) and 64 px images, the recipe's step (forward,
label-position loss, backward, AdamW, zero grads). Reported: decoder weight bytes, resident memory after a
warm-up step, the peak above it during the next step, the median step time and its ratio to fp32, the loss
of the first step, the load (quantization) time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def build_variant(config: str, variant: str, batch_size: int, seq_len: int, overrides):
    """The model with its decoder loaded as ``variant``, and its training step (returns the step's mean loss)."""
    import torch
    from omegaconf import OmegaConf

    from medcap import config as medcap_config
    from medcap.checkpoint.decoder import load_frozen_decoder
    from medcap.models import set_train_mode, set_trainable
    from medcap.models.quantize import QUANTIZATION_ATTR, DecoderQuantization, decoder_weight_bytes

    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(list(overrides)))
    torch.manual_seed(0)
    model = medcap_config.instantiate(cfg.model)
    if variant != "fp32":
        setattr(model.decoder, QUANTIZATION_ATTR, DecoderQuantization(variant, torch.device("cpu"), torch.float32))
        model.decoder.to("meta")
    start = time.perf_counter()
    load_frozen_decoder(cfg.checkpointer, model.decoder)
    load_seconds = time.perf_counter() - start
    names = set(set_trainable(model, "encoder_and_projector"))
    set_train_mode(model)
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if n in names], lr=1e-4)
    loss_fn = medcap_config.instantiate(cfg.loss)
    k = model.num_image_tokens
    tokens = torch.randint(3, 1000, (batch_size, seq_len), generator=torch.Generator().manual_seed(1))
    tokens[:, 1:1 + k] = model.image_token_id
    labels = torch.full_like(tokens, -100)
    labels[:, -seq_len // 4:] = tokens[:, -seq_len // 4:]
    size = cfg.model_transform.image_transform.image_size
    images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(2))

    def step() -> float:
        hidden = model(tokens, images=images)
        loss, count = loss_fn(hidden, labels, model.lm_head)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item() / count

    info = {"variant": variant, "decoder_weight_bytes": sum(decoder_weight_bytes(model.decoder).values()), "load_seconds": load_seconds}
    return step, info


def measure_memory(config: str, variant: str, batch_size: int, seq_len: int, overrides) -> dict:
    """Resident memory after a warm-up step and the peak above it during the next (a fresh process)."""
    import ctypes
    import gc

    step, info = build_variant(config, variant, batch_size, seq_len, overrides)
    info["first_loss"] = step()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    resident = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    step()
    info.update(resident_bytes=resident * 1024, step_peak_bytes=(_status_kib("VmHWM") - resident) * 1024)
    return info


def time_interleaved(config: str, variants, batch_size: int, seq_len: int, rounds: int, overrides) -> dict:
    """Median step seconds of each variant, all loaded in one process, timed in alternating rounds."""
    steps = {}
    for variant in variants:
        steps[variant], _ = build_variant(config, variant, batch_size, seq_len, overrides)
        steps[variant]()  # warm-up
    times = {variant: [] for variant in variants}
    for index in range(rounds):
        order = variants if index % 2 == 0 else list(reversed(variants))  # ABC, CBA, ...
        for variant in order:
            t0 = time.perf_counter()
            steps[variant]()
            times[variant].append(time.perf_counter() - t0)
    return {variant: statistics.median(values) for variant, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="recipes/configs/medcap/smollm2_135M_synthetic_cpu.yaml")
    parser.add_argument("--variants", nargs="+", default=["fp32", "nf4", "int8", "bnb_nf4", "bnb_int8"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (each variant once per round, alternating order)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config key=value overrides (e.g. llm_dir=...)")
    args = parser.parse_args()
    if args.child == "__time__":
        print(json.dumps(time_interleaved(args.config, args.variants, args.batch_size, args.seq_len, args.steps, args.overrides)))
        return 0
    if args.child:
        print(json.dumps(measure_memory(args.config, args.child, args.batch_size, args.seq_len, args.overrides)))
        return 0
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    common = ["--config", args.config, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
    results = []
    for variant in args.variants:
        out = subprocess.run([sys.executable, __file__, *common, "--child", variant, *args.overrides], capture_output=True, text=True, env=env, cwd=ROOT)
        if out.returncode:
            print(f"{variant}: failed\n{out.stderr[-1500:]}", file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    out = subprocess.run([sys.executable, __file__, *common, "--variants", *args.variants, "--child", "__time__", *args.overrides],
                         capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    seconds = json.loads(out.stdout.strip().splitlines()[-1])
    for r in results:
        r["step_seconds"] = seconds[r["variant"]]
    base = next((r for r in results if r["variant"] == "fp32"), results[0])
    mib = 2**20
    print(f"SmolLM2-135M frozen decoder, batch {args.batch_size} x {args.seq_len} tokens, CPU, 1 thread")
    print("| decoder | weights MiB | resident after warm-up MiB | step peak above it MiB | step s (median) | x fp32 time | first-step loss | load s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['variant']} | {r['decoder_weight_bytes'] / mib:.0f} | {r['resident_bytes'] / mib:.0f} | {r['step_peak_bytes'] / mib:.0f} | "
              f"{r['step_seconds']:.3f} | {r['step_seconds'] / base['step_seconds']:.2f} | {r['first_loss']:.4f} | {r['load_seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
