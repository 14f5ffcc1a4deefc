"""Merge a run's decoder LoRA adapters into full decoder weights, written by the run's torchtune checkpointer.

Usage::

    python tools/merge_lora.py outputs/run/epoch_2 --output exports/run_epoch_2_decoder

Reads ``outputs/run/config.yaml`` (model, checkpointer), loads the full-precision base decoder from the
run's checkpointer (also for a QLoRA run: the adapters are merged into the unquantized weights, as
torchtune merges its QLoRA adapters), adds ``alpha / r * B A`` to every adapted weight and saves the
result with the same checkpointer class (Hugging Face safetensors shards + config files, or a Meta
``.pth``) into ``--output``, with ``checkpointer.yaml``: the node that loads it, e.g.
``checkpointer=...`` for ``recipes/generate.py`` with a model config without ``decoder_lora``.
Prints a JSON summary.
"""

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torchtune import training  # noqa: E402

from medcap import config as medcap_config  # noqa: E402
from medcap.checkpoint.adapters import merged_decoder_state  # noqa: E402
from medcap.models.lora import apply_decoder_lora, lora_of  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="RUN_DIR/epoch_N with adapter_model.safetensors (its parent holds config.yaml)")
    parser.add_argument("--output", required=True, help="directory for the merged decoder (must not exist or be empty)")
    args = parser.parse_args(argv)
    epoch_dir, output = Path(args.checkpoint), Path(args.output)
    config_path = epoch_dir.parent / "config.yaml"
    if not config_path.is_file():
        raise SystemExit(f"{config_path} not found: give a training run's epoch_N directory")
    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"--output {output} exists and is not empty")
    cfg = OmegaConf.load(config_path)
    model_cfg = cfg.model.copy()
    model_cfg.decoder_quantization = None  # the structure only: names, shapes, rank, alpha
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        decoder = medcap_config.instantiate(model_cfg).decoder
    lora = lora_of(decoder)
    if lora is None:
        raise SystemExit(f"{config_path}: model.decoder_lora is not set: the run trained no decoder adapter")
    apply_decoder_lora(decoder, lora)
    with tempfile.TemporaryDirectory(prefix="medcap-merge-") as temp:
        checkpointer = medcap_config.instantiate(cfg.checkpointer, output_dir=temp)
        base = checkpointer.load_checkpoint()[training.MODEL_KEY]
        merged = merged_decoder_state(base, epoch_dir, decoder)
        checkpointer.save_checkpoint({training.MODEL_KEY: merged}, epoch=0)
        output.mkdir(parents=True, exist_ok=True)
        written = sorted(p.name for p in (Path(temp) / "epoch_0").iterdir())
        for name in written:
            shutil.move(str(Path(temp) / "epoch_0" / name), output / name)
    model_files = [n for n in written if n.startswith(("model", "consolidated")) and n.endswith((".safetensors", ".pth", ".bin", ".pt"))]
    node = OmegaConf.create({key: value for key, value in OmegaConf.to_container(cfg.checkpointer).items() if key != "output_dir"})
    node.checkpoint_dir, node.checkpoint_files = str(output), model_files
    OmegaConf.save(node, output / "checkpointer.yaml")
    summary = {"merged_from": str(epoch_dir), "output": str(output), "files": written, "rank": lora.rank, "alpha": lora.alpha,
               "adapted_modules": list(lora.target_modules), "checkpointer": OmegaConf.to_container(node)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
