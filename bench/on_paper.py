"""On paper: FLOPs per training sample of Llama-3-8B + BiomedCLIP at medcap's settings, and H100 throughput.

    python bench/on_paper.py [--mfu 0.4] [--h100-tflops 989] [--caption-tokens 128] [--data DIR] [--llm-dir DIR]

medcap's GPU config (``recipes/configs/medcap/llama3_8B_biomedclip_single_device.yaml``): BiomedCLIP's
ViT-B/16 at 224 px (197 tokens, pooled CLS -> 512) trained whole, medcap's projector
``Linear(512, 4096) -> GELU -> Linear(4096, 32 * 4096)`` (32 image tokens), frozen Llama-3-8B
(32 layers, d 4096, 32 query / 8 key-value heads of 128, SwiGLU 14336, vocabulary 128,256), the LM
head only at the labelled positions, activation checkpointing on (the decoder's forward runs twice).

Sequence lengths come from the converted VQA-RAD and SLAKE-English train files (medcap's converters
and chat template, 32 image placeholders), tokenized with SmolLM2's byte-level BPE as a stand-in for
Llama-3's (Llama-3's tokenizer is not available offline; both are byte-level BPEs, Llama-3's 128k
vocabulary gives somewhat fewer tokens, so the counts here are on the high side). Captions: no caption
set is on this machine; ``--caption-tokens`` (default 128 text tokens per sample, a ROCO-style caption
with its instruction) is an assumption, stated as such.

FLOPs (a multiply-add = 2): with ``s`` tokens (32 image + text), ``n`` labelled tokens, decoder matmul
parameters ``P`` = 218M per layer x 32 = 6.98B:

* decoder: ``(2 + 2 + 2 * c) * P_total * s + 32 * (4 + 8 + 4 c) * s^2 * 4096`` (forward, input-gradient
  backward, ``c = 1`` recomputed forward under activation checkpointing; no weight gradients);
* LM head: ``4 * n * 4096 * 128256``;
* projector: ``6 * (512 * 4096 + 4096 * 131072)`` per image (it sees one pooled vector);
* tower: ``6 * 197 * 12 * 7.08M + 12 * 12 * 197^2 * 768`` per image (+ patch embedding).

Throughput = MFU x peak / FLOPs per sample (H100 SXM dense bf16 peak 989 TFLOP/s; 8 GPUs: 8x, data
parallel, communication of the 625M trainable parameters' gradients ignored).
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llava_peer as lp  # noqa: E402

LLAMA3_8B = dict(layers=32, dim=4096, heads=32, kv_heads=8, head_dim=128, ffn=14336, vocab=128256)
BIOMEDCLIP = dict(layers=12, dim=768, tokens=197, patches=196, pooled=512)
IMAGE_TOKENS = 32


def flops_per_sample(seq_len: float, labelled: float, checkpointing: bool = True) -> dict:
    """Analytical training FLOPs of one sample (see the module docstring)."""
    m, v = LLAMA3_8B, BIOMEDCLIP
    per_layer = 2 * m["dim"] * m["dim"] + 2 * m["dim"] * m["kv_heads"] * m["head_dim"] + 3 * m["dim"] * m["ffn"]
    params = m["layers"] * per_layer
    c = 1 if checkpointing else 0
    decoder = (4 + 2 * c) * params * seq_len + m["layers"] * (12 + 4 * c) * seq_len ** 2 * m["dim"]
    head = 4 * labelled * m["dim"] * m["vocab"]
    projector = 6 * (v["pooled"] * m["dim"] + m["dim"] * IMAGE_TOKENS * m["dim"])
    tower = (6 * v["tokens"] * v["layers"] * 12 * v["dim"] ** 2 + v["layers"] * 12 * v["tokens"] ** 2 * v["dim"]
             + 4 * v["patches"] * 3 * 256 * v["dim"])
    total = decoder + head + projector + tower
    return {"decoder": decoder, "lm_head": head, "projector": projector, "tower": tower, "total": total,
            "decoder_params": params}


def lengths(data_root: Path, llm_dir: Path):
    """(tokens, labelled tokens) of every VQA-RAD train and SLAKE-en train record, 32 image placeholders."""
    from medcap.data import MedcapTransform, parse_record, to_messages
    from medcap.data.converters import ConvertOptions, convert_slake, convert_vqarad
    from medcap.models.smollm2 import smollm2_tokenizer

    transform = MedcapTransform(smollm2_tokenizer(str(llm_dir)), IMAGE_TOKENS, max_seq_len=400)
    out = {}
    sets = {"VQA-RAD train": lambda: convert_vqarad(str(data_root / "vqa_rad"), ["train"], options=ConvertOptions(empty_answers="keep")),
            "SLAKE-en train": lambda: convert_slake(str(data_root / "slake"), ["train"], options=ConvertOptions(empty_answers="keep"))}
    for name, convert in sets.items():
        try:
            records = convert()
        except Exception as error:  # a data set absent on this machine
            print(f"{name}: not converted ({error})", file=sys.stderr)
            continue
        rows = []
        for index, record in enumerate(records):
            if not all(turn.get("value", "").strip() for turn in record["conversations"]):
                continue  # SLAKE's one empty answer (train record 1622)
            parsed = parse_record(record, name, index)
            tokens, labels = transform.tokenize(to_messages(parsed.turns, True))
            rows.append((len(tokens), sum(label != lp.IGNORE_INDEX for label in labels)))
        out[name] = rows
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation assumed on the H100")
    parser.add_argument("--h100-tflops", type=float, default=989.0, help="dense bf16 peak of one H100 SXM")
    parser.add_argument("--caption-tokens", type=int, default=128, help="assumed text tokens of a caption sample")
    parser.add_argument("--caption-labelled", type=int, default=64, help="assumed labelled tokens of a caption sample")
    parser.add_argument("--data", type=Path, default=lp.DEFAULT_DATA.parent, help="folder holding vqa_rad/ and slake/")
    parser.add_argument("--llm-dir", type=Path, default=lp.DEFAULT_LLM_DIR)
    args = parser.parse_args(argv)

    rate = args.mfu * args.h100_tflops * 1e12
    rows = []
    for name, pairs in lengths(args.data, args.llm_dir).items():
        s = statistics.mean(p[0] for p in pairs)
        n = statistics.mean(p[1] for p in pairs)
        rows.append((f"{name} ({len(pairs)} QA; mean, median {statistics.median(p[0] for p in pairs):.0f} tokens)", s, n, len(pairs)))
    rows.append((f"caption (assumed {args.caption_tokens} text tokens, {args.caption_labelled} labelled)",
                 IMAGE_TOKENS + args.caption_tokens, args.caption_labelled, None))
    print(f"Llama-3-8B (frozen, {flops_per_sample(1, 0)['decoder_params'] / 1e9:.2f}B matmul parameters) + BiomedCLIP "
          f"ViT-B/16 224 px + medcap projector ({IMAGE_TOKENS} image tokens), activation checkpointing; "
          f"H100 at {100 * args.mfu:.0f}% MFU of {args.h100_tflops:.0f} TFLOP/s")
    print("| sample | tokens s | labelled n | GFLOP/sample | decoder % | tower % | projector % | LM head % "
          "| samples/s 1 H100 | samples/s 8 H100 | epoch on 1 / 8 H100 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, s, n, count in rows:
        f = flops_per_sample(s, n)
        per_second = rate / f["total"]
        epoch = f"{count / per_second:.0f} s / {count / per_second / 8:.1f} s" if count else "-"
        shares = " | ".join(f"{100 * f[k] / f['total']:.1f}" for k in ("decoder", "tower", "projector", "lm_head"))
        print(f"| {name} | {s:.1f} | {n:.1f} | {f['total'] / 1e9:.0f} | {shares} | {per_second:.0f} | {8 * per_second:.0f} | {epoch} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
