"""Times one training step on identical batches: medcap against Hugging Face LLaVA (same model, same weights).

    python bench/train_step.py [--sizes tiny smollm2] [--batch-size 4] [--batches 2] [--repeats 4] \
        [--image-size 224] [--threads 1] [--no-memory] [--profile] [--data DIR] [--llm-dir DIR]

Both sides are built by ``bench/llava_peer.py``: a CLIP ViT tower (``tiny``: 64 wide, 2 blocks, 64 px,
16 image tokens; ``smollm2``: ViT-S/16-sized, 384 wide, 12 blocks, 224 px, 196 image tokens) + MLP
projector + frozen Llama decoder (``tiny``: 2 layers of 64, random; ``smollm2``: SmolLM2-135M-Instruct
with its real weights from ``assets/smollm2-135m-instruct``). Ours is :class:`medcap.models.MedcapModel`
with ``LabelPositionCrossEntropy``; the peer ``transformers.LlavaForConditionalGeneration`` with its
own loss, weights copied from ours. The batches are real VQA-RAD train samples (medcap's converter,
tokenizer and open_clip preprocessing), the same samples on both sides (``medcap.data.padded_collate_images``
for ours, right padding + attention mask for the peer).

It first checks that both sides compute the same loss on the first batch (|difference| <= 1e-4) and
the same projector gradient, then times ``--repeats`` rounds of one step on each of ``--batches``
batches per side, the sides alternating (ABAB, BABA, ...), and reports medians: seconds per step,
samples/s, tokens/s (image + text tokens, padding excluded) and the ratio. The step is the recipe's:
forward, loss, backward, clip to norm 1, ``torch.optim.AdamW`` step, zero grads.

Memory: each side runs again alone in a fresh process (allocations >= 64 KiB mmapped, so the resident
set follows the live tensors): ``resident`` is the RSS after one warm-up step (weights, optimizer
state, libraries), ``step`` the peak RSS during the next step above it (activations, gradients,
workspace): the issue's activation memory.

FLOP efficiency: the analytical FLOPs of our step (formula in :func:`llava_peer.step_flops`) over its
median time, against the best fp32 ``torch.matmul`` rate of a 2048^3 product measured in the same run.
``--profile`` prints torch.profiler's top operators of one step of each side.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llava_peer as lp  # noqa: E402

TARGET_STEP_RATIO = 1.1
TARGET_MEMORY_RATIO = 0.6
TARGET_FLOP_SHARE = 0.65


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "smollm2"], choices=sorted(lp.SIZES))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2, help="distinct real batches timed per round")
    parser.add_argument("--repeats", type=int, default=4, help="rounds per side (alternating order)")
    parser.add_argument("--image-size", type=int, default=None, help="override the size's image side (multiple of 16)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-side memory processes")
    parser.add_argument("--profile", action="store_true", help="torch.profiler: top operators of one step per side")
    parser.add_argument("--data", type=Path, default=lp.DEFAULT_DATA, help="VQA-RAD release folder")
    parser.add_argument("--llm-dir", type=Path, default=lp.DEFAULT_LLM_DIR)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--memory-child", choices=["ours", "peer"], default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def setup(size_name: str, args):
    """Both models, the loss and the ``--batches`` real batches (as each side collates them)."""
    import torch

    from medcap.training import LabelPositionCrossEntropy

    size = lp.size_with_image(lp.SIZES[size_name], args.image_size)
    llm_dir = args.llm_dir if size_name == "smollm2" else None
    ours = lp.build_ours(size, seed=args.seed, llm_dir=llm_dir)
    dataset = lp.vqarad_dataset(size, args.data, args.llm_dir)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed)).tolist()
    pad_id = dataset.model_transform.tokenizer.pad_id
    batches = []
    for index in range(args.batches):
        samples = [dataset[i] for i in order[index * args.batch_size: (index + 1) * args.batch_size]]
        batches.append((lp.collate_ours(samples, pad_id), lp.collate_peer(samples, pad_id)))
    return size, ours, LabelPositionCrossEntropy(), batches


def memory_child(args) -> int:
    """One side alone: a warm-up step, then the measured step; prints the memory JSON."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    size, ours, loss_fn, batches = setup(args.sizes[0], args)
    batch_ours, batch_peer = batches[0]
    if args.memory_child == "ours":
        trainer = lp.Trainer(ours, lambda b: lp.loss_ours(ours, b, loss_fn))
        batch = batch_ours
    else:
        peer = lp.build_peer(ours, size)
        del ours
        gc.collect()
        trainer = lp.Trainer(peer, lambda b: lp.loss_peer(peer, b))
        batch = batch_peer
    result = lp.step_memory(lambda: trainer.step(batch), warmup=lambda: trainer.step(batch))
    print(json.dumps(result))
    return 0


def profile_step(name: str, trainer, batch, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step(batch)
    print(f"\n--- torch.profiler, one step, {name} (self CPU time) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def run_size(size_name: str, args) -> dict:
    import torch

    size, ours, loss_fn, batches = setup(size_name, args)
    peer = lp.build_peer(ours, size)
    parity = lp.check_loss_parity(ours, peer, batches[0][0], batches[0][1], loss_fn)
    trainers = {
        "ours": lp.Trainer(ours, lambda b: lp.loss_ours(ours, b, loss_fn)),
        "peer": lp.Trainer(peer, lambda b: lp.loss_peer(peer, b)),
    }
    side_batches = {"ours": [b[0] for b in batches], "peer": [b[1] for b in batches]}
    for name, trainer in trainers.items():  # warm-up (allocator, oneDNN kernels, optimizer state)
        trainer.step(side_batches[name][0])
    peak_before = lp.matmul_peak_gflops()
    seconds = lp.interleaved(
        {name: (lambda n=name: [trainers[n].step(b) for b in side_batches[n]]) for name in trainers}, args.repeats
    )
    peak_after = lp.matmul_peak_gflops()
    per_step = {name: lp.median(values) / len(batches) for name, values in seconds.items()}
    tokens = sum(int(b["attention_mask"].sum()) for b in side_batches["peer"]) / len(batches)  # per step
    flops = [lp.step_flops(size, b["tokens"], b["labels"], b["images"].shape[0]) for b in side_batches["ours"]]
    flops_peer = [lp.step_flops(size, b["tokens"], b["labels"], b["images"].shape[0], full_vocab=True)
                  for b in side_batches["ours"]]
    mean_flops = sum(f["total"] for f in flops) / len(flops)
    mean_flops_peer = sum(f["total"] for f in flops_peer) / len(flops_peer)
    peak = max(peak_before, peak_after)
    result = {
        "size": size_name, "image_tokens": size.image_tokens, "batch_size": args.batch_size,
        "padded_length": [int(b["tokens"].shape[1]) for b in side_batches["ours"]],
        "parity": parity, "seconds_per_round": seconds, "seconds_per_step": per_step,
        "samples_per_second": {n: args.batch_size / s for n, s in per_step.items()},
        "tokens_per_second": {n: tokens / s for n, s in per_step.items()},
        "ratio": per_step["peer"] / per_step["ours"],
        "flops_per_step": {k: sum(f[k] for f in flops) / len(flops) for k in flops[0]},
        "flops_per_step_peer": mean_flops_peer,
        "matmul_peak_gflops": [peak_before, peak_after],
        "achieved_gflops": {"ours": mean_flops / per_step["ours"] / 1e9, "peer": mean_flops_peer / per_step["peer"] / 1e9},
    }
    result["flop_share"] = result["achieved_gflops"]["ours"] / peak
    if args.profile:
        for name, trainer in trainers.items():
            profile_step(name, trainer, side_batches[name][0])
    del trainers, ours, peer
    if not args.no_memory:
        child_args = ["--sizes", size_name, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                      "--seed", str(args.seed), "--data", str(args.data), "--llm-dir", str(args.llm_dir), "--batches", "1"]
        if args.image_size:
            child_args += ["--image-size", str(args.image_size)]
        result["memory"] = {side: lp.run_memory_child(Path(__file__), child_args + ["--memory-child", side])
                            for side in ("ours", "peer")}
        result["memory_ratio"] = result["memory"]["ours"]["step_mb"] / result["memory"]["peer"]["step_mb"]
    return result


def report(r: dict) -> None:
    p = r["parity"]
    print(f"\n== {r['size']}: {r['image_tokens']} image tokens, batch {r['batch_size']}, padded lengths "
          f"{r['padded_length']} ==")
    print(f"loss on batch 0: ours {p['loss_ours']:.6f}  peer {p['loss_peer']:.6f}  |diff| {p['abs_diff']:.2e} "
          f"(<= 1e-4: {'OK' if p['ok'] else 'FAILED'}); projector gradient relative difference {p['grad_rel_diff']:.2e}")
    for name in ("ours", "peer"):
        rounds = ", ".join(f"{s:.2f}" for s in r["seconds_per_round"][name])
        print(f"{name}: {r['seconds_per_step'][name]:7.3f} s/step (median; rounds of {len(r['padded_length'])} steps: "
              f"{rounds} s)  {r['samples_per_second'][name]:6.2f} samples/s  {r['tokens_per_second'][name]:8.0f} tokens/s")
    ok = r["ratio"] >= TARGET_STEP_RATIO
    print(f"step ratio (peer time / ours): {r['ratio']:.2f}x (target >= {TARGET_STEP_RATIO}x) {'OK' if ok else 'BELOW TARGET'}")
    f = r["flops_per_step"]
    print(f"FLOPs of our step (analytical): {f['total'] / 1e9:.1f} G = decoder {f['decoder'] / 1e9:.1f} + LM head "
          f"{f['lm_head'] / 1e9:.2f} + tower {f['tower'] / 1e9:.1f} + projector {f['projector'] / 1e9:.2f}; "
          f"the peer's step (full-vocabulary head): {r['flops_per_step_peer'] / 1e9:.1f} G")
    peak = max(r["matmul_peak_gflops"])
    print(f"fp32 matmul peak (2048^3, best of 5, before/after): {r['matmul_peak_gflops'][0]:.1f} / "
          f"{r['matmul_peak_gflops'][1]:.1f} GFLOP/s; achieved: ours {r['achieved_gflops']['ours']:.1f} GFLOP/s = "
          f"{100 * r['flop_share']:.0f}% of peak (target >= {100 * TARGET_FLOP_SHARE:.0f}%) "
          f"{'OK' if r['flop_share'] >= TARGET_FLOP_SHARE else 'BELOW TARGET'}; peer {r['achieved_gflops']['peer']:.1f} GFLOP/s "
          f"= {100 * r['achieved_gflops']['peer'] / peak:.0f}%")
    if "memory" in r:
        m = r["memory"]
        for name in ("ours", "peer"):
            print(f"memory {name}: resident before the step {m[name]['resident_mb']:.0f} MB, peak {m[name]['peak_mb']:.0f} MB, "
                  f"step (peak - resident) {m[name]['step_mb']:.0f} MB")
        ok = r["memory_ratio"] <= TARGET_MEMORY_RATIO
        print(f"activation memory ratio (ours / peer): {r['memory_ratio']:.2f}x (target <= {TARGET_MEMORY_RATIO}x) "
              f"{'OK' if ok else 'ABOVE TARGET'}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.data / "VQA_RAD Dataset Public.json").is_file():
        print(f"VQA-RAD not found at {args.data} (set MEDCAP_DATA or --data)", file=sys.stderr)
        return 2
    if not (args.llm_dir / "tokenizer.json").is_file():
        print(f"SmolLM2 not found in {args.llm_dir}; run: python tools/import_gguf.py --smollm2 --output {args.llm_dir}",
              file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    print(lp.machine_conditions())
    results = []
    for size_name in args.sizes:
        result = run_size(size_name, args)
        report(result)
        results.append(result)
    print(f"\nat the end: {lp.machine_conditions()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
