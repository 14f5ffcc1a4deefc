"""Measures speed levers of medcap's training step that are not (yet) in medcap's code.

    python bench/train_levers.py [--levers dedup checkpointing adamw compile] [--repeats 4] [--batch-size 8] \
        [--image-size 224] [--threads 1] [--no-memory]

Model and data as ``bench/train_step.py`` (size ``smollm2``: SmolLM2-135M-Instruct frozen, ViT-S/16-sized
CLIP tower + MLP projector, real VQA-RAD train samples). Each lever is timed against the recipe's
step as it is, the two alternating (ABAB, then BABA), on the same batch; medians.

* ``dedup``: the vision tower once per distinct image. VQA-RAD asks ~5.7 questions per image; a
  batch of ``--batch-size`` questions drawn from ``--images-per-batch`` images (what a sampler that
  groups questions of one image would give) runs the tower + projector on the distinct images and
  copies the image tokens to every question (``index_select``; the gradients add up), then the
  decoder on ``input_embeds``. The same batch through ``MedcapModel.forward`` is the baseline. The
  losses are checked equal.
* ``checkpointing``: torchtune's ``set_activation_checkpointing`` on the decoder layers (the recipe's
  ``enable_activation_checkpointing: True``): time and step memory.
* ``adamw``: ``torch.optim.AdamW`` ``foreach`` (the default) against ``fused=True`` and the plain loop,
  the optimizer step alone over the trainable parameters.
* ``compile``: ``torch.compile`` of every decoder layer (``layer.compile()``), after warm-up calls
  (their cost reported), on the same batch.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llava_peer as lp  # noqa: E402

CLOCK = time.process_time  # set from --clock


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", default=["dedup", "checkpointing", "adamw"],
                        choices=["dedup", "checkpointing", "adamw", "compile"])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images-per-batch", type=int, default=2, help="dedup: distinct images in the batch")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU seconds (robust on a shared core); wall: wall-clock seconds")
    parser.add_argument("--data", type=Path, default=lp.DEFAULT_DATA)
    parser.add_argument("--llm-dir", type=Path, default=lp.DEFAULT_LLM_DIR)
    parser.add_argument("--memory-child", choices=["baseline", "checkpointing"], default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def grouped_batch(dataset, batch_size: int, images: int):
    """``batch_size`` train samples whose questions come from ``images`` distinct images (the first such)."""
    by_image = {}
    for index in range(len(dataset)):
        by_image.setdefault(dataset._samples[index][2], []).append(index)
    per_image = -(-batch_size // images)
    chosen = [indices[:per_image] for indices in by_image.values() if len(indices) >= per_image][:images]
    picks = [i for group in chosen for i in group][:batch_size]
    return [dataset[i] for i in picks], [dataset._samples[i][2] for i in picks]


def dedup_loss(model, batch, image_index, loss_fn):
    """The loss with the tower + projector run once per distinct image (``image_index``: row -> distinct image)."""
    import torch

    tokens = batch["tokens"]  # [b, s]
    is_placeholder = tokens == model.image_token_id
    embeds = model.decoder.tok_embeddings(tokens.masked_fill(is_placeholder, 0))  # [b, s, d]
    unique_tokens = model.image_encoder(batch["unique_images"])  # [u, k, d]: u distinct images
    image_tokens = unique_tokens.index_select(0, image_index)  # [b, k, d]
    embeds = embeds.masked_scatter(is_placeholder.unsqueeze(-1), image_tokens)
    hidden = model(tokens, input_embeds=embeds)
    loss_sum, num_tokens = loss_fn(hidden, batch["labels"], model.lm_head)
    return loss_sum / max(num_tokens, 1)


def build(args, size):
    from medcap.training import LabelPositionCrossEntropy

    model = lp.build_ours(size, seed=0, llm_dir=args.llm_dir)
    dataset = lp.vqarad_dataset(size, args.data, args.llm_dir)
    pad_id = dataset.model_transform.tokenizer.pad_id
    samples = [dataset[i] for i in range(args.batch_size)]
    return model, dataset, pad_id, lp.collate_ours(samples, pad_id), LabelPositionCrossEntropy()


def memory_child(args, size) -> int:
    from torchtune import modules, training

    model, _, _, batch, loss_fn = build(args, size)
    if args.memory_child == "checkpointing":
        training.set_activation_checkpointing(model.decoder, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
    trainer = lp.Trainer(model, lambda b: lp.loss_ours(model, b, loss_fn))
    print(json.dumps(lp.step_memory(lambda: trainer.step(batch), warmup=lambda: trainer.step(batch))))
    return 0


def report_pair(name: str, seconds: dict) -> None:
    base, lever = (lp.median(v) for v in seconds.values())
    labels = list(seconds)
    rounds = "; ".join(f"{label}: " + ", ".join(f"{v:.2f}" for v in seconds[label]) for label in labels)
    print(f"{name}: {labels[0]} {base:.3f} s, {labels[1]} {lever:.3f} s (medians of {len(seconds[labels[0]])}; rounds "
          f"{rounds}); speed-up {base / lever:.2f}x")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    size = lp.size_with_image(lp.SIZES["smollm2"], args.image_size)
    if args.memory_child:
        return memory_child(args, size)
    print(lp.machine_conditions())
    model, dataset, pad_id, batch, loss_fn = build(args, size)
    print(f"clock: {args.clock} seconds")
    print(f"model: SmolLM2-135M + ViT-S/16-sized tower at {size.image_size} px ({size.image_tokens} image tokens), "
          f"batch {args.batch_size} of real VQA-RAD train samples, {args.threads} thread(s)")

    if "dedup" in args.levers:
        samples, paths = grouped_batch(dataset, args.batch_size, args.images_per_batch)
        grouped = lp.collate_ours(samples, pad_id)
        distinct = list(dict.fromkeys(paths))
        image_index = torch.tensor([distinct.index(p) for p in paths])
        grouped["unique_images"] = grouped["images"][torch.tensor([paths.index(p) for p in distinct])]
        base = lp.Trainer(model, lambda b: lp.loss_ours(model, b, loss_fn))
        lever = lp.Trainer(model, lambda b: dedup_loss(model, b, image_index, loss_fn))
        with torch.no_grad():
            same = abs(float(lp.loss_ours(model, grouped, loss_fn)) - float(dedup_loss(model, grouped, image_index, loss_fn)))
        base.step(grouped), lever.step(grouped)
        seconds = lp.interleaved({"tower per question": lambda: base.step(grouped),
                                  "tower per distinct image": lambda: lever.step(grouped)}, args.repeats, clock=CLOCK)
        tower = {"all": [], "distinct": []}
        for _ in range(args.repeats):  # the image side alone, forward + backward: 8 images against the distinct ones
            for key, images in (("all", grouped["images"]), ("distinct", grouped["unique_images"])):
                start = CLOCK()
                model.image_encoder(images).sum().backward()
                tower[key].append(CLOCK() - start)
                model.zero_grad(set_to_none=True)
        tower_only = tower["all"]
        step = lp.median(seconds["tower per question"])
        print(f"\n[dedup] {args.batch_size} questions of {len(distinct)} images (padded length {grouped['tokens'].shape[1]}); "
              f"|loss difference| {same:.2e}; image side forward+backward for {args.batch_size} images "
              f"{lp.median(tower_only):.2f} s = {100 * lp.median(tower_only) / step:.0f}% of the step, for the "
              f"{len(distinct)} distinct images {lp.median(tower['distinct']):.2f} s")
        report_pair("[dedup] step", seconds)

    if "checkpointing" in args.levers:
        from torchtune import modules, training

        plain = lp.build_ours(size, seed=0, llm_dir=args.llm_dir)
        checkpointed = lp.build_ours(size, seed=0, llm_dir=args.llm_dir)
        training.set_activation_checkpointing(checkpointed.decoder, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
        trainers = {"plain": lp.Trainer(plain, lambda b: lp.loss_ours(plain, b, loss_fn)),
                    "activation checkpointing": lp.Trainer(checkpointed, lambda b: lp.loss_ours(checkpointed, b, loss_fn))}
        for trainer in trainers.values():
            trainer.step(batch)
        seconds = lp.interleaved({name: (lambda t=t: t.step(batch)) for name, t in trainers.items()}, args.repeats, clock=CLOCK)
        print(f"\n[checkpointing] batch {args.batch_size}, padded length {batch['tokens'].shape[1]}")
        report_pair("[checkpointing] step", seconds)
        del trainers, plain, checkpointed
        if not args.no_memory:
            child = ["--threads", str(args.threads), "--batch-size", str(args.batch_size), "--data", str(args.data),
                     "--llm-dir", str(args.llm_dir)] + (["--image-size", str(args.image_size)] if args.image_size else [])
            for mode in ("baseline", "checkpointing"):
                m = lp.run_memory_child(Path(__file__), child + ["--memory-child", mode])
                print(f"[checkpointing] memory {mode}: resident {m['resident_mb']:.0f} MB, step {m['step_mb']:.0f} MB")

    if "adamw" in args.levers:
        params = lp.trainable_parameters(model)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        optimizers = {kind: torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01, **options)
                      for kind, options in (("foreach", {"foreach": True}), ("fused", {"fused": True}),
                                            ("for-loop", {"foreach": False}))}
        for optimizer in optimizers.values():
            optimizer.step()
        seconds = lp.interleaved({k: (lambda o=o: o.step()) for k, o in optimizers.items()}, 2 * args.repeats, clock=CLOCK)
        numel = sum(p.numel() for p in params)
        print(f"\n[adamw] optimizer step over {numel / 1e6:.1f}M trainable parameters: "
              + ", ".join(f"{k} {1000 * lp.median(v):.0f} ms" for k, v in seconds.items()))
        model.zero_grad(set_to_none=True)

    if "compile" in args.levers:
        compiled = lp.build_ours(size, seed=0, llm_dir=args.llm_dir)
        for layer in compiled.decoder.layers:
            layer.compile(dynamic=False)
        trainers = {"eager": lp.Trainer(model, lambda b: lp.loss_ours(model, b, loss_fn)),
                    "compiled layers": lp.Trainer(compiled, lambda b: lp.loss_ours(compiled, b, loss_fn))}
        start = CLOCK()
        trainers["compiled layers"].step(batch)
        warm = CLOCK() - start
        trainers["compiled layers"].step(batch)
        trainers["eager"].step(batch)
        seconds = lp.interleaved({name: (lambda t=t: t.step(batch)) for name, t in trainers.items()}, args.repeats, clock=CLOCK)
        print(f"\n[compile] first compiled step (compilation) {warm:.1f} s")
        report_pair("[compile] step", seconds)
    print(f"\nat the end: {lp.machine_conditions()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
