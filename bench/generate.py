"""Times answering the VQA-RAD test questions: batched KV-cache decoding against medcap's loop.

    python bench/generate.py [--limit 451] [--peer-limit 60] [--batch-size 32] \
        [--max-new-tokens 16] [--threads 1] [--data ../shared/data/vqa_rad]

Model: the CPU demo model of ``recipes/configs/medcap/smollm2_135M_synthetic_cpu.yaml``
(SmolLM2-135M-Instruct decoder from ``assets/smollm2-135m-instruct`` + timm ``test_resnet`` tower
at 64 px + MLP projector, 4 image tokens). The image side is left at its seeded random init: only
speed is measured. Greedy, ``torch.inference_mode()``, fp32, same prompts and images for both:

* ours: :func:`medcap.generation.generate`, batches of ``--batch-size``, KV cache; the vision
  tower runs once per image (prefill), then one token per step;
* peer (what medcap's original does): one question at a time, no cache: every step runs the whole
  sequence so far through ``model(tokens, images=image)`` (vision tower included), the LM head on
  the last position, argmax; until a stop token or ``--max-new-tokens``.

The peer runs on the first ``--peer-limit`` questions only (it is slow) and its questions/s is
extrapolated to the rest; ours runs on all ``--limit`` questions and, for a like-for-like ratio,
again on the same first ``--peer-limit``. Images are loaded and transformed once, beforehand, for
both (timed apart). Prints questions/s, tokens/s, how many answers agree, and the ratio.

``--peers hf`` (in the default ``loop hf``) adds the Hugging Face peer: ``transformers``'
``LlavaForConditionalGeneration.generate`` (KV cache, greedy, left padding + attention mask, batches
of ``--batch-size``) against ours on a model both can express (``bench/llava_peer.py``): the same
SmolLM2-135M-Instruct decoder + a ViT-S/16-sized CLIP tower at ``--hf-image-size`` (32 px: 4 image
tokens, as the demo model) + MLP projector, weights copied from ours, on the first ``--hf-limit``
questions, the two sides alternating batch by batch; answers compared token for token.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout
MODEL_CONFIG = REPO_ROOT / "recipes" / "configs" / "medcap" / "smollm2_135M_synthetic_cpu.yaml"
TARGET_RATIO = 5.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = Path(os.environ.get("MEDCAP_DATA", REPO_ROOT / ".." / "shared" / "data")) / "vqa_rad"
    parser.add_argument("--data", type=Path, default=default_data, help="VQA-RAD release folder")
    parser.add_argument("--llm-dir", type=Path, default=REPO_ROOT / "assets" / "smollm2-135m-instruct",
                        help="SmolLM2 converted by tools/import_gguf.py --smollm2")
    parser.add_argument("--limit", type=int, default=None, help="questions answered by ours (default: all 451)")
    parser.add_argument("--peer-limit", type=int, default=60, help="questions answered by the peer (first N)")
    parser.add_argument("--batch-size", type=int, default=32, help="ours: questions per batch")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 unless the machine is otherwise idle (OpenMP threads "
                             "that share a core with another busy process run many times slower)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the untrained image side")
    parser.add_argument("--peers", nargs="+", choices=["loop", "hf"], default=["loop", "hf"],
                        help="loop: medcap's per-sample no-cache loop; hf: transformers' LLaVA generate")
    parser.add_argument("--hf-limit", type=int, default=128, help="questions answered by both in the HF comparison")
    parser.add_argument("--hf-image-size", type=int, default=32, help="CLIP tower input side of the HF comparison")
    parser.add_argument("--profile", action="store_true", help="HF comparison: torch.profiler top operators of one batch per side")
    return parser.parse_args()


def read_questions(root: Path, limit: Optional[int] = None) -> List[Tuple[str, Path]]:
    """The official VQA-RAD test questions (phrase_type test_freeform + test_para) and their images."""
    from medcap.data import parse_record
    from medcap.data.converters import ConvertOptions, convert_vqarad

    records = convert_vqarad(str(root), ["test"], options=ConvertOptions(empty_answers="keep"))[:limit]
    questions = []
    for index, record in enumerate(records):
        parsed = parse_record(record, root / "VQA_RAD Dataset Public.json", index)
        question = next(text for role, text in parsed.turns if role == "user")
        questions.append((question, parsed.image_path))
    return questions


def build_model(llm_dir: Path, seed: int):
    """The CPU demo model (decoder weights loaded, image side seeded), its tokenizer and image transform."""
    import torch
    from omegaconf import OmegaConf

    from medcap import config as medcap_config
    from medcap.checkpoint.decoder import load_frozen_decoder

    cfg = OmegaConf.load(MODEL_CONFIG)
    cfg.llm_dir = str(llm_dir)
    torch.manual_seed(seed)
    model = medcap_config.instantiate(cfg.model)
    load_frozen_decoder(cfg.checkpointer, model.decoder)
    model.eval()
    transform = medcap_config.instantiate(cfg.model_transform, num_image_tokens=model.num_image_tokens)
    tokenizer, image_transform = transform.tokenizer, transform.image_transform
    return model, tokenizer, image_transform


def answer_ours(model, prompts, images, batch_size: int, pad_id: int, stop_tokens, max_new_tokens: int) -> List[List[int]]:
    """Batched greedy decoding with the KV cache (the vision tower runs once per image)."""
    from medcap.generation import generate

    outputs = []
    for start in range(0, len(prompts), batch_size):
        outputs += generate(model, prompts[start: start + batch_size], images[start: start + batch_size], pad_id=pad_id,
                            stop_tokens=stop_tokens, max_new_tokens=max_new_tokens, use_cache=True)
    return outputs


def answer_peer(model, prompts, images, stop_tokens: Sequence[int], max_new_tokens: int) -> List[List[int]]:
    """medcap's loop: one question at a time, the whole sequence and the image recomputed every step."""
    import torch

    outputs = []
    for prompt, image in zip(prompts, images):
        tokens = torch.tensor([prompt])  # [1, s]
        generated: List[int] = []
        for _ in range(max_new_tokens):
            hidden = model(tokens, images=image[None])  # [1, s, d]: vision tower + all positions
            token = int(model.lm_head(hidden[:, -1]).argmax(dim=-1))
            if token in stop_tokens:
                break
            generated.append(token)
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)  # [1, s + 1]
        outputs.append(generated)
    return outputs


def timed(function, *args, **kwargs):
    """Call ``function`` and return its result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def answer_hf(peer, prompts, images, batch_size: int, pad_id: int, stop_tokens, max_new_tokens: int) -> List[List[int]]:
    """``LlavaForConditionalGeneration.generate``: left-padded batches, attention mask, greedy, KV cache."""
    import torch
    import llava_peer as lp

    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        longest = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long)  # [b, s], left padding
        attention_mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, prompt in enumerate(chunk):
            ids = torch.tensor(prompt)
            input_ids[row, longest - len(prompt):] = ids.masked_fill(ids == lp.OUR_IMAGE_TOKEN_ID, lp.PEER_IMAGE_TOKEN_ID)
            attention_mask[row, longest - len(prompt):] = 1
        generated = peer.generate(input_ids=input_ids, attention_mask=attention_mask,
                                  pixel_values=images[start: start + batch_size], max_new_tokens=max_new_tokens,
                                  do_sample=False, use_cache=True, eos_token_id=list(stop_tokens), pad_token_id=pad_id)
        for row in generated[:, longest:].tolist():
            cut = next((i for i, token in enumerate(row) if token in stop_tokens), len(row))
            outputs.append(row[:cut])
    return outputs


def compare_hf(args) -> None:
    """Ours against ``transformers``' LLaVA ``generate`` on the same CLIP-tower model, prompts and images."""
    import torch
    from transformers import GenerationConfig

    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import llava_peer as lp
    from medcap.data import MedcapTransform, load_image, open_clip_image_transform
    from medcap.generation import direct_prompt
    from medcap.models.smollm2 import smollm2_tokenizer

    size = lp.size_with_image(lp.SIZES["smollm2"], args.hf_image_size)
    ours = lp.build_ours(size, seed=args.seed, llm_dir=args.llm_dir).eval()
    peer = lp.build_peer(ours, size).eval()
    peer.generation_config = GenerationConfig(do_sample=False, use_cache=True)
    tokenizer = smollm2_tokenizer(str(args.llm_dir))
    image_transform = open_clip_image_transform(image_size=size.image_size)
    transform = MedcapTransform(tokenizer, size.image_tokens, max_seq_len=512, image_transform=image_transform)
    questions = read_questions(args.data, args.hf_limit)
    prompts = [transform.tokenize(direct_prompt(q, has_image=True), add_end_tokens=False)[0] for q, _ in questions]
    images = torch.stack([image_transform(load_image(path)) for _, path in questions])  # [n, 3, H, H]
    stop_tokens, pad_id = list(tokenizer.stop_tokens), tokenizer.pad_id
    decode = dict(pad_id=pad_id, stop_tokens=stop_tokens, max_new_tokens=args.max_new_tokens)
    load_at_start = os.getloadavg()[0]
    seconds = {"ours": 0.0, "hf": 0.0}
    cpu_seconds = {"ours": 0.0, "hf": 0.0}  # this process's CPU time: robust when other jobs share the core
    batch_ratios, cpu_ratios = [], []
    answers = {"ours": [], "hf": []}
    runs = {"ours": lambda p, i: answer_ours(ours, p, i, args.batch_size, **decode),
            "hf": lambda p, i: answer_hf(peer, p, i, args.batch_size, **decode)}
    with torch.inference_mode():
        for name in runs:  # warm-up
            runs[name](prompts[:2], images[:2])
        for index, start in enumerate(range(0, len(prompts), args.batch_size)):
            chunk, chunk_images = prompts[start: start + args.batch_size], images[start: start + args.batch_size]
            took, cpu = {}, {}
            for name in (["ours", "hf"] if index % 2 == 0 else ["hf", "ours"]):  # alternate, batch by batch
                cpu_start = time.process_time()
                result, took[name] = timed(runs[name], chunk, chunk_images)
                cpu[name] = time.process_time() - cpu_start
                answers[name] += result
                seconds[name] += took[name]
                cpu_seconds[name] += cpu[name]
            batch_ratios.append(took["hf"] / took["ours"])
            cpu_ratios.append(cpu["hf"] / cpu["ours"])
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            for name in runs:
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    runs[name](prompts[: args.batch_size], images[: args.batch_size])
                print(f"--- torch.profiler, one batch of {args.batch_size}, {name} (self CPU time) ---")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    n = len(prompts)
    same = sum(a == b for a, b in zip(answers["ours"], answers["hf"]))
    print(f"HF comparison model: SmolLM2-135M + ViT-S/16-sized CLIP tower at {size.image_size} px + MLP projector "
          f"({size.image_tokens} image tokens), fp32, threads {args.threads}, greedy, max_new_tokens {args.max_new_tokens}, "
          f"batch {args.batch_size}, {n} VQA-RAD test questions; load average {load_at_start:.2f} -> {os.getloadavg()[0]:.2f}")
    for name, label in (("ours", "ours (medcap.generation.generate, KV cache)"), ("hf", "peer (LLaVA .generate, KV cache)")):
        tokens = sum(map(len, answers[name]))
        print(f"{label}: {seconds[name]:7.1f} s ({cpu_seconds[name]:.1f} CPU s)  {n / seconds[name]:6.2f} questions/s  "
              f"{tokens / seconds[name]:6.1f} new tokens/s")
    print(f"answers identical, ours vs HF generate: {same}/{n}")
    for index in [i for i, (a, b) in enumerate(zip(answers["ours"], answers["hf"])) if a != b][:5]:
        print(f"  differs at question {index}: ours {tokenizer.decode(answers['ours'][index])!r} | "
              f"hf {tokenizer.decode(answers['hf'][index])!r}")
    ratio = seconds["hf"] / seconds["ours"]
    print(f"per-batch ratios (HF time / ours, {len(batch_ratios)} batches): "
          f"{', '.join(f'{r:.2f}' for r in batch_ratios)}; median {statistics.median(batch_ratios):.2f}x; in CPU time: "
          f"{', '.join(f'{r:.2f}' for r in cpu_ratios)}; median {statistics.median(cpu_ratios):.2f}x, total "
          f"{cpu_seconds['hf'] / cpu_seconds['ours']:.2f}x")
    print(f"ratio (ours / HF generate, total time): {ratio:.2f}x (target >= 1.5x) {'OK' if ratio >= 1.5 else 'BELOW TARGET'}")
    print()


def main() -> int:
    args = parse_args()
    if not (args.data / "VQA_RAD Dataset Public.json").is_file():
        print(f"VQA-RAD not found at {args.data} (set MEDCAP_DATA or --data to the folder holding "
              "'VQA_RAD Dataset Public.json')", file=sys.stderr)
        return 2
    if not (args.llm_dir / "model.safetensors").is_file():
        print(f"SmolLM2 weights not found in {args.llm_dir}; convert them first: "
              f"python tools/import_gguf.py --smollm2 --output {args.llm_dir}", file=sys.stderr)
        return 2

    import torch

    from medcap.data import MedcapTransform, load_image
    from medcap.generation import direct_prompt

    torch.set_num_threads(args.threads)
    if "hf" in args.peers:
        compare_hf(args)
    if "loop" not in args.peers:
        return 0
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    model, tokenizer, image_transform = build_model(args.llm_dir, args.seed)
    transform = MedcapTransform(tokenizer, model.num_image_tokens, max_seq_len=512, image_transform=image_transform)
    load_seconds = time.perf_counter() - start

    questions = read_questions(args.data, args.limit)
    start = time.perf_counter()
    prompts = [transform.tokenize(direct_prompt(question, has_image=True), add_end_tokens=False)[0] for question, _ in questions]
    images = torch.stack([image_transform(load_image(path)) for _, path in questions])  # [n, 3, 64, 64]
    prepare_seconds = time.perf_counter() - start
    peer_count = min(args.peer_limit, len(questions))
    stop_tokens, pad_id = list(tokenizer.stop_tokens), tokenizer.pad_id
    decode = dict(stop_tokens=stop_tokens, max_new_tokens=args.max_new_tokens)

    with torch.inference_mode():
        answer_ours(model, prompts[:2], images[:2], args.batch_size, pad_id, **decode)  # warm-up
        answer_peer(model, prompts[:1], images[:1], **decode)
        ours, ours_seconds = timed(answer_ours, model, prompts, images, args.batch_size, pad_id, **decode)
        ours_head, ours_head_seconds = timed(answer_ours, model, prompts[:peer_count], images[:peer_count], args.batch_size, pad_id, **decode)
        peer, peer_seconds = timed(answer_peer, model, prompts[:peer_count], images[:peer_count], **decode)

    same = sum(a == b for a, b in zip(ours[:peer_count], peer))
    head_same = sum(a == b for a, b in zip(ours[:peer_count], ours_head))
    lengths = [len(p) for p in prompts]
    load_at_end = os.getloadavg()[0]
    ours_rate, head_rate, peer_rate = len(ours) / ours_seconds, peer_count / ours_head_seconds, peer_count / peer_seconds

    print(f"model: SmolLM2-135M + test_resnet 64 px + MLP projector ({model.num_image_tokens} image tokens), fp32, "
          f"threads {args.threads}, greedy, max_new_tokens {args.max_new_tokens}")
    print(f"questions: {len(questions)} VQA-RAD test (prompt {min(lengths)}-{max(lengths)} tokens, mean "
          f"{sum(lengths) / len(lengths):.1f})")
    print(f"load average (1 min): {load_at_start:.2f} at the start, {load_at_end:.2f} at the end, {os.cpu_count()} cores"
          + ("; the CPU was shared: numbers are noisy" if max(load_at_start, load_at_end) > os.cpu_count() + 0.5 else ""))
    print(f"model load: {load_seconds:.1f} s; prompts + images prepared once for both: {prepare_seconds:.1f} s (not counted)")
    print()
    print(f"ours, batch {args.batch_size}, KV cache, all {len(ours)}:  {ours_seconds:7.1f} s  {ours_rate:6.2f} questions/s  "
          f"{sum(map(len, ours)) / ours_seconds:6.1f} new tokens/s")
    print(f"ours, same, first {peer_count}:          {ours_head_seconds:7.1f} s  {head_rate:6.2f} questions/s  "
          f"{sum(map(len, ours_head)) / ours_head_seconds:6.1f} new tokens/s")
    print(f"peer, per-sample no cache, first {peer_count}: {peer_seconds:7.1f} s  {peer_rate:6.2f} questions/s  "
          f"{sum(map(len, peer)) / peer_seconds:6.1f} new tokens/s")
    print(f"peer on all {len(questions)} (extrapolated from the first {peer_count}): "
          f"{len(questions) / peer_rate:.0f} s vs ours {ours_seconds:.0f} s")
    print()
    print(f"answers identical, ours vs peer (first {peer_count}): {same}/{peer_count}; "
          f"ours batched twice (all vs first {peer_count}): {head_same}/{peer_count}")
    differing = [index for index, (a, b) in enumerate(zip(ours[:peer_count], peer)) if a != b]
    for index in differing[:5]:
        a, b = ours[index], peer[index]
        print(f"  differs at question {index}: ours {tokenizer.decode(a)!r} | peer {tokenizer.decode(b)!r}")
    print(f"ratio on the same first {peer_count} (ours / per-sample no-cache): {head_rate / peer_rate:.1f}x")
    ratio = ours_rate / peer_rate
    print(f"ratio (ours / per-sample no-cache): {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x) "
          f"{'OK' if ratio >= TARGET_RATIO else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
