"""Helpers shared by the tests (importable as ``helpers``: ``tests/`` is on pytest's pythonpath)."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Real datasets: ``$MEDCAP_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MEDCAP_DATA", REPO_ROOT.parent / "shared" / "data"))


def require_dataset(name: str) -> Path:
    """Path of a real dataset under :func:`shared_data_dir`, or skip the test saying why."""
    path = shared_data_dir() / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (set MEDCAP_DATA)")
    return path


def build_tiny_model(tiny_assets, output: str = "pooled", projector: str = "medcap", num_tokens: int = 4, seed: int = 0):
    """A tiny MedcapModel with the saved decoder weights loaded."""
    from torchtune.models.llama3 import llama3

    from medcap.models import medcap_model, medcap_projector, mlp_projector, open_clip_vision_tower
    from medcap.utils.tiny import TINY_DECODER, TINY_VOCAB_SIZE
    from torchtune.models.convert_weights import meta_to_tune

    torch.manual_seed(seed)
    decoder = llama3(**TINY_DECODER)
    decoder.load_state_dict(meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True)))
    tower = open_clip_vision_tower(f"local-dir:{tiny_assets['vision']}", output=output)
    if projector == "medcap":
        proj = medcap_projector(tower.out_dim, 64, num_tokens=num_tokens)
    else:
        proj = mlp_projector(tower.out_dim, 64)
    return medcap_model(decoder, tower, proj, image_token_id=TINY_VOCAB_SIZE)


def load_script(relative_path: str):
    """A recipe or tool file loaded as a fresh module (``recipes/`` is not a package: torchtune owns that name)."""
    import importlib.util

    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"medcap_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logged_values(output_dir: Path, key: str = "loss"):
    """Values of ``key`` in the DiskLogger files of a run, in step order."""
    import re

    lines = []
    for log in sorted((Path(output_dir) / "logs").glob("log_*.txt")):
        lines += log.read_text().splitlines()
    return [float(re.search(rf"\b{key}:([-0-9.e+a-z]+)", line).group(1)) for line in lines if f" {key}:" in line]
