"""Times an epoch over VQA-RAD train (1,797 QA): medcap's pipeline against LLaVA fed the way TRL feeds it.

    python bench/train_epoch.py [--steps 6] [--batch-size 8] [--image-size 224] [--threads 1] \
        [--data DIR] [--llm-dir DIR]

The same model on both sides (``bench/llava_peer.py``, size ``smollm2``: SmolLM2-135M-Instruct with its
real weights, frozen, + a ViT-S/16-sized CLIP tower + MLP projector, trainable), the same real data,
batch size and optimizer; each side with its own pipeline:

* **ours**, as ``recipes/full_finetune_single_device.py`` is configured
  (``smollm2_135M_vqarad_cpu.yaml``): ``build_sampler(group_by_length=True, shuffle=True, seed=0)``,
  ``padded_collate_images``, ``LabelPositionCrossEntropy`` (LM head at the labelled positions);
* **peer**, as TRL's ``SFTTrainer`` feeds a LLaVA model: random order (``RandomSampler``), right
  padding to the longest in the batch with an attention mask, the model's own loss over
  full-vocabulary logits at every position, fused AdamW (the ``transformers`` Trainer's default
  ``optim`` for torch >= 2.8; ``--peer-foreach`` for the plain one).

An epoch is 225 steps of batch 8; at SmolLM2 size one step takes ~15 s on one thread of this CPU,
so a full epoch per side would take about an hour. The benchmark therefore times ``--steps``
batches per side, spread evenly over each side's own epoch order (batch ``i * n_batches / steps``),
the two sides alternating step by step, and extrapolates: epoch time = mean (data + step) time of
the timed batches x number of batches. Data time (reading, decoding and transforming the images,
tokens already cached by the dataset, collate: what a ``num_workers=0`` loader does) is timed apart
and reported as a share of the step. ``--steps 0`` runs the full epoch.
"""

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llava_peer as lp  # noqa: E402

TARGET_EPOCH_RATIO = 1.5
TARGET_DATA_SHARE = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed batches per side (0: the whole epoch)")
    parser.add_argument("--batch-size", type=int, default=8, help="the VQA-RAD CPU config's batch size")
    parser.add_argument("--image-size", type=int, default=None, help="tower input side (default 224: 196 image tokens)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours-fused", action="store_true",
                        help="ours with torch.optim.AdamW(fused=True) (a lever) instead of the config's default foreach")
    parser.add_argument("--peer-foreach", action="store_true",
                        help="the peer with foreach AdamW instead of the Trainer's default for torch >= 2.8, adamw_torch_fused")
    parser.add_argument("--data", type=Path, default=lp.DEFAULT_DATA, help="VQA-RAD release folder")
    parser.add_argument("--llm-dir", type=Path, default=lp.DEFAULT_LLM_DIR)
    return parser.parse_args(argv)


def epoch_batches(sampler, batch_size: int):
    """The index batches a ``DataLoader(batch_size, sampler, drop_last=False)`` yields in one epoch."""
    order = list(sampler)
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.data / "VQA_RAD Dataset Public.json").is_file():
        print(f"VQA-RAD not found at {args.data} (set MEDCAP_DATA or --data)", file=sys.stderr)
        return 2
    import torch
    from torch.utils.data import RandomSampler

    from medcap.data import build_sampler
    from medcap.training import LabelPositionCrossEntropy

    torch.set_num_threads(args.threads)
    print(lp.machine_conditions())
    size = lp.size_with_image(lp.SIZES["smollm2"], args.image_size)
    ours = lp.build_ours(size, seed=args.seed, llm_dir=args.llm_dir)
    peer = lp.build_peer(ours, size)
    dataset = lp.vqarad_dataset(size, args.data, args.llm_dir)
    pad_id = dataset.model_transform.tokenizer.pad_id
    loss_fn = LabelPositionCrossEntropy()

    our_sampler = build_sampler(dataset, args.batch_size, shuffle=True, group_by_length=True, seed=args.seed)
    our_sampler.set_epoch(0)
    peer_sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed))
    sides = {
        "ours": dict(batches=epoch_batches(our_sampler, args.batch_size), collate=partial(lp.collate_ours, pad_id=pad_id),
                     trainer=lp.Trainer(ours, lambda b: lp.loss_ours(ours, b, loss_fn), **({"fused": True} if args.ours_fused else {}))),
        "peer": dict(batches=epoch_batches(peer_sampler, args.batch_size), collate=partial(lp.collate_peer, pad_id=pad_id),
                     trainer=lp.Trainer(peer, lambda b: lp.loss_peer(peer, b), **({} if args.peer_foreach else {"fused": True}))),
    }
    num_batches = len(sides["ours"]["batches"])
    steps = num_batches if args.steps <= 0 else min(args.steps, num_batches)
    picks = [i * num_batches // steps for i in range(steps)]
    lengths = dataset.lengths
    for name, side in sides.items():
        padded = [max(lengths[i] for i in side["batches"][j]) * len(side["batches"][j]) for j in range(num_batches)]
        side["padding_share"] = 1 - sum(lengths) / sum(padded)
        side["data"], side["step"], side["tokens"], side["cpu"] = [], [], [], []

    for name, side in sides.items():  # warm-up: one step each on a batch that is not timed
        side["trainer"].step(side["collate"]([dataset[i] for i in side["batches"][-1]]))
    start_all = time.perf_counter()
    for round_index, pick in enumerate(picks):
        order = ["ours", "peer"] if round_index % 2 == 0 else ["peer", "ours"]
        for name in order:
            side = sides[name]
            cpu_start, start = time.process_time(), time.perf_counter()
            batch = side["collate"]([dataset[i] for i in side["batches"][pick]])
            loaded = time.perf_counter()
            side["trainer"].step(batch)
            side["data"].append(loaded - start)
            side["step"].append(time.perf_counter() - loaded)
            side["cpu"].append(time.process_time() - cpu_start)  # data + step, this process's CPU seconds
            side["tokens"].append(sum(lengths[i] for i in side["batches"][pick]))
    wall = time.perf_counter() - start_all

    print(f"model: SmolLM2-135M-Instruct (frozen) + ViT-S/16-sized CLIP tower at {size.image_size} px "
          f"({size.image_tokens} image tokens) + MLP projector; batch {args.batch_size}; VQA-RAD train "
          f"{len(dataset)} QA = {num_batches} batches; fp32, {args.threads} thread(s)")
    print(f"AdamW: ours {'fused (lever)' if args.ours_fused else 'foreach (torch default, as configured)'}, peer "
          f"{'foreach' if args.peer_foreach else 'fused (transformers Trainer default optim adamw_torch_fused)'}")
    print(f"timed: {steps} batches per side at epoch positions {picks}, sides alternating; {wall:.0f} s in all")
    epoch = {}
    for name, side in sides.items():
        data, step = sum(side["data"]) / steps, sum(side["step"]) / steps
        epoch[name] = (data + step) * num_batches
        share = data / step
        print(f"{name}: step {step:6.2f} s + data {data:5.3f} s ({100 * share:.1f}% of the step; target < "
              f"{100 * TARGET_DATA_SHARE:.0f}%) per batch; padding {100 * side['padding_share']:.1f}% of the epoch's "
              f"padded tokens; {sum(side['tokens']) / (sum(side['data']) + sum(side['step'])):.0f} tokens/s; "
              f"epoch {'(extrapolated) ' if steps < num_batches else ''}{epoch[name] / 60:.1f} min")
    ratio = epoch["peer"] / epoch["ours"]
    cpu_epoch = {name: sum(side["cpu"]) / steps * num_batches for name, side in sides.items()}
    print(f"in CPU seconds of this process (robust when other jobs share the core): ours "
          f"{cpu_epoch['ours'] / 60:.1f} min, peer {cpu_epoch['peer'] / 60:.1f} min per epoch, ratio "
          f"{cpu_epoch['peer'] / cpu_epoch['ours']:.2f}x")
    print(f"epoch ratio (peer / ours, wall clock): {ratio:.2f}x (target >= {TARGET_EPOCH_RATIO}x) "
          f"{'OK' if ratio >= TARGET_EPOCH_RATIO else 'BELOW TARGET'}")
    print(f"at the end: {lp.machine_conditions()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
