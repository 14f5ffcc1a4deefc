"""How medcap's training step grows: samples/s and peak memory as image tokens, text length and batch grow alone.

    python bench/train_scaling.py [--repeats 3] [--threads 1] [--no-memory] [--llm-dir DIR]

Model: ``bench/llava_peer.py`` size ``smollm2`` (SmolLM2-135M-Instruct frozen, ViT-S/16-sized CLIP tower +
MLP projector trainable), the recipe's step (``LabelPositionCrossEntropy``, backward, clip, AdamW).
Each row changes one thing from the base point (16 image tokens = 64 px, 64 text tokens, batch 4):

* image tokens 1, 4, 16, 64, 196 (the tower's input side 16, 32, 64, 128, 224 px at patch 16);
* text tokens 64, 128, 256, 512 (after the image tokens);
* batch 1, 4, 16.

Samples are synthetic and of exact shape (:func:`llava_peer.synthetic_samples`: a BOS, the image
placeholders, random text ids, the last 8 labelled as the answer; random pixels), so a row measures
the shape, not the data. Seconds are the median of ``--repeats`` steps after a warm-up step. Memory
(peak RSS above the resident set before the step, and the resident set: see ``bench/train_step.py``)
comes from a second pass in a child process. It also prints the analytical FLOPs per sample and the
shares of decoder, tower and LM head, which say which term dominates where.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llava_peer as lp  # noqa: E402

IMAGE_SIDES = {1: 16, 4: 32, 16: 64, 64: 128, 196: 224}
BASE = dict(image_tokens=16, text_tokens=64, batch=4)
ANSWER_TOKENS = 8


def points():
    """(axis, value, shape) of every row: one of image tokens, text length or batch changes from BASE."""
    rows = [("image tokens", k, dict(BASE, image_tokens=k)) for k in IMAGE_SIDES]
    rows += [("text tokens", t, dict(BASE, text_tokens=t)) for t in (64, 128, 256, 512)]
    rows += [("batch", b, dict(BASE, batch=b)) for b in (1, 4, 16)]
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--llm-dir", type=Path, default=lp.DEFAULT_LLM_DIR)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args, memory: bool):
    """Run every point; timing (``memory=False``) or memory (``memory=True``) per point."""
    from medcap.training import LabelPositionCrossEntropy

    loss_fn = LabelPositionCrossEntropy()
    models = {}
    results = []
    for axis, value, shape in points():
        side = IMAGE_SIDES[shape["image_tokens"]]
        if side not in models:
            models.clear()
            models[side] = lp.build_ours(lp.size_with_image(lp.SIZES["smollm2"], side), seed=0, llm_dir=args.llm_dir)
        model = models[side]
        trainer = lp.Trainer(model, lambda b, m=model: lp.loss_ours(m, b, loss_fn))
        samples = lp.synthetic_samples(shape["batch"], shape["image_tokens"], shape["text_tokens"], ANSWER_TOKENS, side)
        batch = lp.collate_ours(samples, pad_id=0)
        row = {"axis": axis, "value": value, **shape}
        if memory:
            row.update(lp.step_memory(lambda: trainer.step(batch), warmup=lambda: trainer.step(batch)))
        else:
            trainer.step(batch)  # warm-up
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                trainer.step(batch)
                seconds.append(time.perf_counter() - start)
            size = lp.size_with_image(lp.SIZES["smollm2"], side)
            flops = lp.step_flops(size, batch["tokens"], batch["labels"], shape["batch"])
            row.update(seconds=lp.median(seconds), samples_per_second=shape["batch"] / lp.median(seconds),
                       flops=flops, gflops_per_sample=flops["total"] / shape["batch"] / 1e9,
                       achieved_gflops=flops["total"] / lp.median(seconds) / 1e9)
            print(f"  {axis} {value}: {row['seconds']:.2f} s/step", file=sys.stderr, flush=True)
        results.append(row)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(measure(args, memory=True)))
        return 0
    print(lp.machine_conditions())
    peak_before = lp.matmul_peak_gflops()
    rows = measure(args, memory=False)
    peak = max(peak_before, lp.matmul_peak_gflops())
    if not args.no_memory:
        child = ["--threads", str(args.threads), "--llm-dir", str(args.llm_dir), "--memory-child"]
        for row, mem in zip(rows, lp.run_memory_child(Path(__file__), child, timeout=1800)):
            row.update(step_mb=mem["step_mb"], resident_mb=mem["resident_mb"])
    print(f"fp32 matmul peak (2048^3): {peak:.1f} GFLOP/s; base point {BASE}, {ANSWER_TOKENS} labelled tokens per sample")
    print("| grows | value | image tok | text tok | batch | s/step | samples/s | GFLOP/sample | decoder % | tower % "
          "| LM head % | % of matmul peak | step memory MB | resident MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        f = r["flops"]
        share = {k: 100 * f[k] / f["total"] for k in ("decoder", "tower", "lm_head")}
        memory = f"{r['step_mb']:.0f} | {r['resident_mb']:.0f}" if "step_mb" in r else "- | -"
        print(f"| {r['axis']} | {r['value']} | {r['image_tokens']} | {r['text_tokens']} | {r['batch']} | {r['seconds']:.2f} | "
              f"{r['samples_per_second']:.2f} | {r['gflops_per_sample']:.1f} | {share['decoder']:.0f} | {share['tower']:.0f} | "
              f"{share['lm_head']:.1f} | {100 * r['achieved_gflops'] / peak:.0f} | {memory} |")
    print(f"at the end: {lp.machine_conditions()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
