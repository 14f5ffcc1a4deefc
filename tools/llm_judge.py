# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""Judge VQA predictions with a text-only LLM (medcap's RIGHT/WRONG protocol, or options).

Usage::

    python tools/llm_judge.py --config recipes/configs/medcap/judge_tiny_cpu.yaml \\
        predictions=PATH.csv output=PATH.csv [key=value ...]

The config names a torchtune ``decoder`` builder, the ``checkpointer`` that loads it and a chat
``tokenizer`` (``_component_`` nodes); knobs: ``mode`` (right_wrong | choice), ``batch_size``,
``max_rows``, ``max_new_tokens``, ``system_prompt``, ``score_candidates`` (pick the likeliest of
the allowed replies instead of generating), ``device``, ``dtype``, ``quantize_4bit``.
The output CSV is resumable: run the same command again after an interruption. Prints one JSON
summary (counts, unparsable replies apart, accuracies). See docs/judge_report.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import DictConfig, OmegaConf  # noqa: E402

REQUIRED_KEYS = ("predictions", "output", "decoder", "checkpointer", "tokenizer")


def load_config(config_path: Path, overrides: Sequence[str]) -> DictConfig:
    """The YAML config with ``key=value`` overrides merged in (OmegaConf dot-list syntax).

    Raises:
        FileNotFoundError: if the config file does not exist.
        ValueError: if an override is not ``key=value`` or a required key is missing.
    """
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such config file")
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r} is not key=value")
    cfg = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_cli(list(overrides)))
    for key in REQUIRED_KEYS:
        if OmegaConf.select(cfg, key, throw_on_missing=False) in (None, "???"):
            raise ValueError(f"{config_path}: {key!r} is not set (add {key}=... to the command line)")
    return cfg


def load_judge_model(cfg: DictConfig):
    """Build the decoder without allocating it twice, load the checkpoint, optionally quantise.

    The decoder is built on the meta device and the checkpoint tensors are assigned to it, so peak
    memory is one copy of the weights (140 GB in bf16 for a 70B model, before 4-bit quantisation).
    """
    import torch
    from torchtune import config, training, utils

    from medcap import config as medcap_config
    from medcap.metrics.judge_runner import quantize_linear_4bit
    from medcap.models import text_only_model

    device = utils.get_device(cfg.get("device", "cpu"))
    dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=device)
    with training.set_default_dtype(dtype), torch.device("meta"):
        decoder = medcap_config.instantiate(cfg.decoder)
    state_dict = config.instantiate(cfg.checkpointer).load_checkpoint()[training.MODEL_KEY]
    decoder.load_state_dict(state_dict, assign=True)
    del state_dict
    for module in decoder.modules():
        if hasattr(module, "rope_init"):  # RoPE caches are not in the checkpoint: build them for real
            module.rope_init()
    decoder.to(dtype=dtype)
    if cfg.get("quantize_4bit", False):
        quantize_linear_4bit(decoder, compute_dtype=dtype, quant_type=cfg.get("quant_type", "nf4"))
    decoder.to(device=device)  # bitsandbytes quantises the Linear4bit weights here
    decoder.eval().requires_grad_(False)
    return text_only_model(decoder)


def run(cfg: DictConfig) -> dict:
    """Build the judge from ``cfg`` and judge ``cfg.predictions`` into ``cfg.output``."""
    import torch
    from torchtune import training

    from medcap import config as medcap_config
    from medcap.metrics.judge_runner import ChatJudge, judge_csv, read_predictions

    mode = cfg.get("mode", "right_wrong")
    read_predictions(Path(cfg.predictions), mode)  # fail on bad input before loading a large model
    training.set_seed(cfg.get("seed", 0))
    torch.set_num_threads(cfg.get("num_threads", torch.get_num_threads()))
    start = time.perf_counter()
    model = load_judge_model(cfg)
    tokenizer = medcap_config.instantiate(cfg.tokenizer)
    judge = ChatJudge(model, tokenizer, max_new_tokens=cfg.get("max_new_tokens", 16), system_prompt=cfg.get("system_prompt", None),
                      score_candidates=cfg.get("score_candidates", False))
    loaded = time.perf_counter()
    summary = judge_csv(Path(cfg.predictions), Path(cfg.output), judge, mode=mode, batch_size=cfg.get("batch_size", 8),
                        max_rows=cfg.get("max_rows", None), progress=cfg.get("progress", False))
    summary["load_seconds"] = round(loaded - start, 2)
    summary["judge_seconds"] = round(time.perf_counter() - loaded, 2)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="judge YAML config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. predictions=p.csv output=j.csv")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        summary = run(cfg)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
