"""Every YAML config in the repository: launch header, resolvable components, recipe keys, and
every component built (on the meta device or at tiny sizes) so a misspelled argument fails."""

import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from omegaconf import OmegaConf
from torchtune.config._utils import _get_component_from_path

from medcap import config as medcap_config

CONFIGS = sorted((REPO_ROOT / "recipes/configs").rglob("*.yaml"))
TRAINING_KEYS = {
    "output_dir", "model_transform", "model", "checkpointer", "dataset", "loss", "collate_fn", "seed",
    "shuffle", "batch_size", "epochs", "max_steps_per_epoch", "gradient_accumulation_steps", "trainable",
    "optimizer", "optimizer_in_bwd", "clip_grad_norm", "device", "dtype", "metric_logger", "resume_from_checkpoint",
}


def _recipe(script: str):
    spec = importlib.util.spec_from_file_location(f"medcap_recipe_{Path(script).stem}", REPO_ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _own_launch(path: Path):
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    launches = re.findall(r"(?:tune run|python) ((?:recipes|tools)/\S+\.py) --config (\S+)", header)
    return [script for script, config in launches if (REPO_ROOT / config).resolve() == path.resolve()]


def _component_nodes(node, path="cfg"):
    """(path, node) of every ``_component_`` node, outermost first."""
    if isinstance(node, dict):
        if "_component_" in node:
            yield path, node
        for key, value in node.items():
            if key != "_component_":
                yield from _component_nodes(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _component_nodes(value, f"{path}[{index}]")


def _components(node):
    return [(path, found["_component_"]) for path, found in _component_nodes(node)]


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
    assert (cfg.batch_size, cfg.epochs, cfg.optimizer.lr, cfg.model_transform.max_seq_len, cfg.model.num_image_tokens) == (16, 10, 2e-5, 400, 32)
    assert (cfg.device, cfg.dtype, cfg.optimizer._component_) == ("cuda", "bf16", "bitsandbytes.optim.AdamW8bit")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_argument_is_one_its_component_takes(path: Path):
    """Bind each node's arguments to its component's signature: a misspelled argument fails here."""
    resolved = OmegaConf.to_container(OmegaConf.load(path), resolve=True, throw_on_missing=False)
    for where, node in _component_nodes(resolved):
        component = node["_component_"]
        target = _get_component_from_path(component)
        signature = inspect.signature(target)
        arguments = {key: value for key, value in node.items() if key != "_component_"}
        try:
            signature.bind_partial(**arguments)
        except TypeError as error:
            raise AssertionError(f"{path.name}: {where} ({component}): {error}") from None


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_top_level_keys_are_all_read_by_the_recipe(path: Path):
    """The recipe that the header launches accepts every key of the config (unknown keys are refused)."""
    cfg = OmegaConf.load(path)
    for script in _own_launch(path):
        module = _recipe(script)
        if hasattr(module, "CONFIG_KEYS"):
            medcap_config.check_config_keys(cfg, module.CONFIG_KEYS, script)


def test_a_misspelled_top_level_key_is_refused():
    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"), OmegaConf.from_dotlist(["batchsize=8"]))
    module = _recipe("recipes/full_finetune_single_device.py")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) 'batchsize' \(did you mean 'batch_size'\?\)"):
        module.FullFinetuneRecipeSingleDevice(cfg)


TRAINING_CONFIGS = [p for p in CONFIGS if any("full_finetune" in s for s in _own_launch(p))]


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_training_config_model_builds_on_the_meta_device(path: Path, tiny_assets):
    """The whole model of every training config is built (decoder on meta; towers that live in
    folders absent here are swapped for the tiny open_clip folder, keeping the rest of the node)."""
    cfg = OmegaConf.load(path)
    cfg.output_dir = "unused"
    for key in ("llm_dir", "llama_dir", "assets_dir", "data_dir"):
        if key in cfg:
            cfg[key] = str(tiny_assets["root"])
    model_cfg = cfg.model
    tower = model_cfg.get("vision_tower", model_cfg)
    name = tower.get("model_name", tower.get("vision_model", ""))
    if str(name).startswith(("local-dir:", "hf-hub:")):
        tower["model_name" if "model_name" in tower else "vision_model"] = f"local-dir:{tiny_assets['vision']}"
        if "projector" in model_cfg and isinstance(model_cfg.projector, type(model_cfg)):
            model_cfg.projector.in_dim = 32  # the tiny tower's width
    with torch.device("meta"):
        model = medcap_config.instantiate(model_cfg)
    assert model.num_image_tokens > 0
    assert model.image_encoder.out_dim == model.decoder.tok_embeddings.embedding_dim


def test_tiny_config_builds_every_component(tiny_assets, tmp_path):
    """tiny_cpu.yaml at its own (tiny) sizes: every node is built and fits the others."""
    from medcap.data import check_transform_fits_model

    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"),
                          OmegaConf.from_dotlist([f"assets_dir={tiny_assets['root']}", f"output_dir={tmp_path}"]))
    model = medcap_config.instantiate(cfg.model)
    transform = medcap_config.instantiate(cfg.model_transform, num_image_tokens=model.num_image_tokens)
    check_transform_fits_model(transform, model)
    dataset = medcap_config.instantiate(cfg.dataset, model_transform=transform)
    loss = medcap_config.instantiate(cfg.loss)
    collate = _get_component_from_path(cfg.collate_fn)
    batch = collate([dataset[0], dataset[1]], pad_id=transform.tokenizer.pad_id)
    hidden = model(batch["tokens"], images=batch["images"])
    total, count = loss(hidden, batch["labels"], model.lm_head)
    assert count > 0 and torch.isfinite(total)
    optimizer = medcap_config.instantiate(cfg.optimizer, list(model.image_encoder.parameters()))
    medcap_config.instantiate(cfg.lr_scheduler, optimizer, num_training_steps=4)
    medcap_config.instantiate(cfg.metric_logger).close()


def test_transform_and_model_that_disagree_name_both_keys(tiny_assets, tmp_path):
    from medcap.data import check_transform_fits_model

    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"),
                          OmegaConf.from_dotlist([f"assets_dir={tiny_assets['root']}", f"output_dir={tmp_path}"]))
    model = medcap_config.instantiate(cfg.model)
    cfg.model_transform.image_transform.image_size = 48
    transform = medcap_config.instantiate(cfg.model_transform, num_image_tokens=model.num_image_tokens)
    with pytest.raises(ValueError, match=r"model_transform.image_transform gives \(48, 48\) .*model.vision_tower.image_size\) expects 32x32"):
        check_transform_fits_model(transform, model)
    cfg.model_transform.image_transform.image_size = 32
    transform = medcap_config.instantiate(cfg.model_transform, num_image_tokens=model.num_image_tokens)
    model.image_token_id = 267
    with pytest.raises(ValueError, match="model_transform.tokenizer has image token id 268 but model.image_token_id is 267"):
        check_transform_fits_model(transform, model)


def test_an_unread_key_that_is_no_near_miss_is_only_a_warning(caplog):
    cfg = OmegaConf.create({"batch_size": 2, "data_dir": "data/x", "notes": "first try"})
    with caplog.at_level("WARNING"):
        medcap_config.check_config_keys(cfg, ["batch_size"], "recipe")
    assert [r.getMessage() for r in caplog.records] == [
        "recipe: config key 'data_dir' is not read by the recipe (nor used by another value); it has no effect",
        "recipe: config key 'notes' is not read by the recipe (nor used by another value); it has no effect",
    ]
    caplog.clear()
    medcap_config.check_config_keys(OmegaConf.create({"data_dir": "x", "source": "${data_dir}/a.json"}), ["source"], "r")
    assert caplog.records == []
