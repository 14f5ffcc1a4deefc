"""Tiny, deterministic assets for tests and the CPU smoke config.

* a byte-level tiktoken vocabulary (256 tokens) with Llama-3's special tokens moved to ids 256-268,
* a random 2-layer, 64-wide Llama-3 decoder saved as a Meta ``consolidated.00.pth``,
* a tiny open_clip vision tower (timm ``test_vit`` at 32 px) saved as a ``local-dir:`` model in
  BiomedCLIP's file layout (``open_clip_config.json`` + ``open_clip_model.safetensors``),
* a tiny ShareGPT dataset of drawn images.

Everything is seeded, so two builds give identical files.
"""

import base64
import json
from pathlib import Path
from typing import Dict

import numpy as np
import PIL.Image
import torch
from open_clip.model import _build_vision_tower
from safetensors.torch import save_file
from torchtune.models.llama3 import llama3

from medcap.utils.atomic import atomic_write

TINY_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|video|>", "<|image|>",
]
TINY_VOCAB_SIZE = 256 + len(TINY_SPECIAL_TOKENS) - 1  # <|image|> = 268 lies outside the embedding table
TINY_DECODER = dict(vocab_size=TINY_VOCAB_SIZE, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                    intermediate_dim=128, max_seq_len=512, rope_base=500_000)
TINY_VISION_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 32},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def write_tiny_tokenizer(directory: Path) -> Dict[str, Path]:
    """Write ``tokenizer.model`` (tiktoken, bytes only) and ``special_tokens.json``."""
    directory = Path(directory)
    ranks = "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
    special = {"added_tokens": [{"id": 256 + i, "content": name} for i, name in enumerate(TINY_SPECIAL_TOKENS)]}
    model_path, special_path = directory / "tokenizer.model", directory / "special_tokens.json"
    atomic_write(model_path, lambda temp: Path(temp).write_text(ranks))
    atomic_write(special_path, lambda temp: Path(temp).write_text(json.dumps(special, indent=1)))
    return {"path": model_path, "special_tokens_path": special_path}


def write_tiny_decoder(directory: Path, seed: int = 0) -> Path:
    """Write a random tiny Llama-3 decoder as a Meta-format ``consolidated.00.pth``."""
    torch.manual_seed(seed)
    decoder = llama3(**TINY_DECODER)
    path = Path(directory) / "consolidated.00.pth"
    state_dict = _tune_to_meta(decoder.state_dict())
    atomic_write(path, lambda temp: torch.save(state_dict, temp))
    return path


def _tune_to_meta(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    from torchtune.models.convert_weights import tune_to_meta

    return tune_to_meta(state_dict)


def write_tiny_vision_tower(directory: Path, seed: int = 0) -> Path:
    """Write a tiny open_clip vision tower as a ``local-dir:`` model (BiomedCLIP's file layout)."""
    directory = Path(directory)
    torch.manual_seed(seed)
    model_cfg = TINY_VISION_CONFIG["model_cfg"]
    visual = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"])
    state_dict = {f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}
    atomic_write(directory / "open_clip_config.json", lambda temp: Path(temp).write_text(json.dumps(TINY_VISION_CONFIG, indent=1)))
    atomic_write(directory / "open_clip_model.safetensors", lambda temp: save_file(state_dict, temp))
    return directory


def write_tiny_dataset(directory: Path, num_records: int = 8, seed: int = 0) -> Path:
    """Write ``train.json`` with ``num_records`` yes/no records over drawn 40x40 images."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    records = []
    for index in range(num_records):
        has_spot = bool(index % 2)
        pixels = rng.integers(40, 90, size=(40, 40), dtype=np.uint8)
        if has_spot:
            pixels[10:20, 12:22] = 230
        name = f"images/img_{index:03d}.png"
        (directory / "images").mkdir(parents=True, exist_ok=True)
        atomic_write(directory / name, lambda temp, p=pixels: PIL.Image.fromarray(p).save(temp, format="PNG"))
        records.append({
            "conversations": [{"from": "human", "value": "Is there a spot?"},
                              {"from": "gpt", "value": "yes" if has_spot else "no"}],
            "image": name, "answer_type": "CLOSED",
        })
    path = directory / "train.json"
    atomic_write(path, lambda temp: Path(temp).write_text(json.dumps(records, indent=1)))
    return path


def write_tiny_assets(directory: Path) -> Dict[str, Path]:
    """Write every tiny asset under ``directory`` (``tokenizer/``, ``decoder/``, ``vision/``, ``data/``)."""
    directory = Path(directory)
    paths = write_tiny_tokenizer(directory / "tokenizer")
    paths["decoder"] = write_tiny_decoder(directory / "decoder")
    paths["vision"] = write_tiny_vision_tower(directory / "vision")
    paths["data"] = write_tiny_dataset(directory / "data")
    return paths
