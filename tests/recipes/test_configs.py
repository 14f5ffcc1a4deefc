"""Every YAML config in the repository: launch header, resolvable components, recipe keys."""

import re
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from omegaconf import OmegaConf
from torchtune.config._utils import _get_component_from_path

CONFIGS = sorted((REPO_ROOT / "recipes/configs").rglob("*.yaml"))
TRAINING_KEYS = {
    "output_dir", "tokenizer", "max_seq_len", "model", "checkpointer", "image_transform", "dataset", "seed",
    "shuffle", "batch_size", "epochs", "max_steps_per_epoch", "gradient_accumulation_steps", "trainable",
    "optimizer", "optimizer_in_bwd", "clip_grad_norm", "device", "dtype", "metric_logger", "resume_from_checkpoint",
}


def _components(node, path="cfg"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_component_":
                yield path, value
            else:
                yield from _components(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _components(value, f"{path}[{index}]")


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"tiny_cpu.yaml", "llama3_8B_biomedclip_single_device.yaml", "llama3_1_8B_biomedclip_single_device.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path: Path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name}: must start with a comment giving the launch command"
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    launches = re.findall(r"(?:tune run|python) ((?:recipes|tools)/\S+\.py) --config (\S+)", header)
    own = [(script, config) for script, config in launches if (REPO_ROOT / config).resolve() == path.resolve()]
    assert own, f"{path.name}: the header comment has no launch command with --config {path.relative_to(REPO_ROOT)}"
    for script, config in launches:
        assert (REPO_ROOT / script).is_file(), f"{path.name}: launch command names missing script {script}"
        assert (REPO_ROOT / config).is_file(), f"{path.name}: launch command names missing config {config}"
    cfg = OmegaConf.load(path)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # ??? = given at launch
    for where, component in _components(resolved):
        _get_component_from_path(component)  # raises if the dotpath does not import
    if any("full_finetune" in script for script, _ in own):
        missing = TRAINING_KEYS - set(cfg)
        assert not missing, f"{path.name}: missing keys {sorted(missing)}"
        assert cfg.dtype in ("fp32", "bf16") and cfg.device in ("cpu", "cuda")
        assert cfg.trainable in ("projector", "encoder_and_projector", "last_k_blocks")
        if cfg.optimizer_in_bwd:
            assert cfg.gradient_accumulation_steps == 1 and cfg.clip_grad_norm is None


def test_real_use_config_matches_medcap_defaults():
    cfg = OmegaConf.load(REPO_ROOT / "recipes/configs/medcap/llama3_8B_biomedclip_single_device.yaml")
    assert (cfg.batch_size, cfg.epochs, cfg.optimizer.lr, cfg.max_seq_len, cfg.model.num_image_tokens) == (16, 10, 2e-5, 400, 32)
    assert (cfg.device, cfg.dtype, cfg.optimizer._component_) == ("cuda", "bf16", "bitsandbytes.optim.AdamW8bit")
