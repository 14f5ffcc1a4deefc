"""Read a training run's vision tower back: its architecture from ``config.yaml``, its weights from an epoch.

A run directory (a recipe's ``output_dir``) holds ``config.yaml`` (the launched config, resolved) and
``epoch_{n}/image_encoder.safetensors`` (tower + projector, keys ``vision_tower.*`` and ``projector.*``).
The tower is described either by a ``model.vision_tower`` node (``medcap.models.open_clip_vision_tower``)
or by a named builder's ``vision_model``/``output`` arguments (``llama3_8b_biomedclip``).

* :func:`tuned_tower` - the tower of ``epoch_{n}`` (architecture built alone, weights loaded);
* :func:`base_tower` - the tower the run started from, as the recipe built it: a tower that carries
  its own weights (``local-dir:``, ``hf-hub:``, a ``pretrained`` file, ``vision_checkpoint``) is built
  alone; a randomly initialised one replays the recipe (``training.set_seed(seed)`` then the whole
  ``model`` node, decoder included, in the same order), so "base" is the exact untrained initialisation.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from medcap.checkpoint.io import IMAGE_ENCODER_FILE, check_state_dict_fits
from medcap.models.vision import VisionTower, open_clip_vision_tower

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.yaml"
TOWER_PREFIX = "vision_tower."
PROJECTOR_PREFIX = "projector."
_TOWER_COMPONENT = "medcap.models.open_clip_vision_tower"
_TOWER_ARGS = ("model_name", "output", "image_size", "embed_dim", "pool", "proj", "pretrained")
_NAMED_BUILDERS = ("llama3_8b_biomedclip", "llama3_1_8b_biomedclip")


@dataclass
class RunInfo:
    """What a run says about its image side.

    Attributes:
        run_dir (Path): the run's ``output_dir``.
        config (DictConfig): its ``config.yaml``.
        tower_args (Dict[str, Any]): keyword arguments of :func:`open_clip_vision_tower`.
        transform_args (Dict[str, Any]): the eval image transform (``image_size``, ``mean``, ``std``).
        projector_node (Dict[str, Any]): the projector's config node (``{}`` for a named builder).
    """

    run_dir: Path
    config: DictConfig
    tower_args: Dict[str, Any]
    transform_args: Dict[str, Any] = field(default_factory=dict)
    projector_node: Dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.run_dir / RUN_CONFIG_FILE


def split_checkpoint_path(path: Path) -> Tuple[Path, Optional[Path]]:
    """``RUN_DIR`` -> (RUN_DIR, None); ``RUN_DIR/epoch_N`` (or its safetensors file) -> (RUN_DIR, epoch dir).

    Raises:
        FileNotFoundError: when neither the path nor its parent holds a ``config.yaml``.
    """
    path = Path(path)
    if path.is_file() and path.name == IMAGE_ENCODER_FILE:
        path = path.parent
    if (path / RUN_CONFIG_FILE).is_file():
        return path, None
    if (path.parent / RUN_CONFIG_FILE).is_file():
        if not (path / IMAGE_ENCODER_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {IMAGE_ENCODER_FILE} (expected a run's epoch_N directory)")
        return path.parent, path
    raise FileNotFoundError(f"{path}: neither it nor its parent holds the run's {RUN_CONFIG_FILE}")


def read_run(run_dir: Path) -> RunInfo:
    """Read the tower, transform and projector settings of a run from its ``config.yaml``.

    Raises:
        FileNotFoundError: without ``config.yaml``.
        ValueError: when the config names no vision tower this module can rebuild (naming the field).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / RUN_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: the run's saved config is missing")
    cfg = OmegaConf.load(config_path)
    model = cfg.get("model", None)
    if model is None:
        raise ValueError(f"{config_path}: field 'model' is missing")
    tower_node = model.get("vision_tower", None)
    if tower_node is not None:
        if tower_node.get("_component_") != _TOWER_COMPONENT:
            raise ValueError(f"{config_path}: field 'model.vision_tower._component_' is {tower_node.get('_component_')!r}; "
                             f"only {_TOWER_COMPONENT} can be exported")
        node = OmegaConf.to_container(tower_node, resolve=True)
        tower_args = {key: node[key] for key in _TOWER_ARGS if key in node}
    elif str(model.get("_component_", "")).rsplit(".", 1)[-1] in _NAMED_BUILDERS:
        from medcap.models.builders import BIOMEDCLIP

        tower_args = {"model_name": model.get("vision_model", BIOMEDCLIP), "output": model.get("output", "pooled")}
    else:
        raise ValueError(f"{config_path}: field 'model' has neither a 'vision_tower' node nor a known named builder "
                         f"({', '.join(_NAMED_BUILDERS)})")
    if "model_name" not in tower_args:
        raise ValueError(f"{config_path}: field 'model.vision_tower.model_name' is missing")
    transform_node = OmegaConf.select(cfg, "model_transform.image_transform", default=None)
    if transform_node is None:  # runs saved before model_transform existed
        transform_node = cfg.get("image_transform", None)
    transform = OmegaConf.to_container(transform_node, resolve=True) if transform_node is not None else {}
    transform_args = {key: transform[key] for key in ("image_size", "mean", "std") if transform.get(key) is not None}
    projector = model.get("projector", None)
    projector_node = OmegaConf.to_container(projector, resolve=True) if projector is not None else {}
    return RunInfo(run_dir, cfg, tower_args, transform_args, projector_node)


def read_image_encoder(epoch_dir: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """The tower's and the projector's tensors of ``epoch_dir/image_encoder.safetensors`` (prefixes removed)."""
    path = Path(epoch_dir) / IMAGE_ENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no image encoder checkpoint")
    state_dict = load_file(os.fspath(path))
    tower = {k[len(TOWER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TOWER_PREFIX)}
    projector = {k[len(PROJECTOR_PREFIX):]: v for k, v in state_dict.items() if k.startswith(PROJECTOR_PREFIX)}
    if not tower:
        raise ValueError(f"{path}: no '{TOWER_PREFIX}*' tensors (not a medcap image encoder checkpoint)")
    return tower, projector


def _build_tower(info: RunInfo, output: Optional[str]) -> VisionTower:
    args = dict(info.tower_args)
    if output is not None:
        args["output"] = output
    return open_clip_vision_tower(**args)


def tuned_tower(epoch_dir: Path, output: Optional[str] = None) -> Tuple[VisionTower, RunInfo]:
    """The fine-tuned tower of ``RUN_DIR/epoch_N``, in eval mode.

    Args:
        epoch_dir (Path): the epoch directory (its parent holds ``config.yaml``).
        output (Optional[str]): ``"pooled"`` or ``"patch"``; None keeps the run's.

    Returns:
        Tuple[VisionTower, RunInfo]: the tower and the run's settings.
    """
    run_dir, epoch = split_checkpoint_path(Path(epoch_dir))
    if epoch is None:
        raise ValueError(f"{epoch_dir}: give an epoch directory (RUN_DIR/epoch_N), not the run directory")
    info = read_run(run_dir)
    tower = _build_tower(info, output)
    weights, _ = read_image_encoder(epoch)
    check_state_dict_fits(weights, tower.state_dict(), epoch / IMAGE_ENCODER_FILE, what="the run's vision tower")
    tower.load_state_dict(weights)
    return tower.eval(), info


def tower_carries_weights(info: RunInfo) -> bool:
    """True when the run's starting tower comes from files, not from the random generator."""
    name = str(info.tower_args["model_name"])
    return (name.startswith(("local-dir:", "hf-hub:")) or bool(info.tower_args.get("pretrained"))
            or bool(info.config.get("vision_checkpoint", None)))


def base_tower(run_dir: Path, output: Optional[str] = None) -> Tuple[VisionTower, RunInfo]:
    """The tower the run started from (before its first step), in eval mode.

    Args:
        run_dir (Path): the run directory (or one of its epoch directories).
        output (Optional[str]): ``"pooled"`` or ``"patch"``; None keeps the run's.

    Returns:
        Tuple[VisionTower, RunInfo]: the tower and the run's settings.
    """
    run_dir, _ = split_checkpoint_path(Path(run_dir))
    info = read_run(run_dir)
    if tower_carries_weights(info):
        tower = _build_tower(info, output)
        if info.config.get("vision_checkpoint", None):
            weights, _ = read_image_encoder(_epoch_dir_of(Path(info.config.vision_checkpoint)))
            tower.load_state_dict(weights)
        return tower.eval(), info
    from torchtune import training

    from medcap import config as medcap_config

    if str(info.config.get("device", "cpu")) != "cpu":
        log.warning("%s trained on %s: its random tower was drawn by that device's generator; the CPU replay is a "
                    "tower of the same distribution, not the exact start", run_dir, info.config.device)
    dtype = training.get_dtype(info.config.get("dtype", "fp32"), device=torch.device("cpu"))
    training.set_seed(seed=info.config.get("seed", None))  # what the recipe does before building the model
    with training.set_default_dtype(dtype), torch.device("cpu"):
        model = medcap_config.instantiate(info.config.model)
    tower = model.image_encoder.vision_tower.float()
    if output is not None and output != tower.output:
        tower = VisionTower(tower.visual, output=output, image_size=tower.image_size)
    return tower.eval(), info


def _epoch_dir_of(path: Path) -> Path:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: base towers from legacy .pt checkpoints are not supported; export it first")
        return path.parent
    return path
