"""Export a run's fine-tuned image side as files other libraries load (``tools/export_encoder.py``).

Output directory::

    open_clip_config.json, open_clip_model.safetensors   # open_clip local-dir: model (a complete CLIP)
    timm/config.json, timm/model.safetensors             # the trunk as a timm model (timm towers only)
    projector.safetensors, projector_config.json         # the projector into the LLM's embedding space
    README.md                                            # model card from the run's files

The folder is built under a temporary name and appears whole (:func:`medcap.utils.atomic.atomic_directory`);
before it is published, medcap's own ``local-dir:`` loader rebuilds the tower from it and its pooled
features must equal the run's (:func:`medcap.export.open_clip_dir.check_export`).
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from safetensors.torch import save_file

from medcap.export.model_card import model_card
from medcap.export.open_clip_dir import check_export, open_clip_export_files, write_open_clip_dir, write_timm_dir, TIMM_SUBDIR
from medcap.export.run import read_image_encoder, split_checkpoint_path, tuned_tower
from medcap.utils.atomic import atomic_directory

PROJECTOR_WEIGHTS_FILE = "projector.safetensors"
PROJECTOR_CONFIG_FILE = "projector_config.json"
MODEL_CARD_FILE = "README.md"


def export_encoder(
    checkpoint: Path, output_dir: Path, probe_results: Sequence[Dict[str, Any]] = (), with_timm: bool = True
) -> Dict[str, Any]:
    """Export ``RUN_DIR/epoch_N`` to ``output_dir``.

    Args:
        checkpoint (Path): the epoch directory (its parent holds the run's ``config.yaml``).
        output_dir (Path): the export directory (replaced whole if it exists).
        probe_results (Sequence[Dict[str, Any]]): linear-probe rows to quote in the model card.
        with_timm (bool): also write the timm trunk (when the tower is a timm model).

    Returns:
        Dict[str, Any]: a summary (files, text tower, timm architecture, feature gap of the check).
    """
    run_dir, epoch_dir = split_checkpoint_path(Path(checkpoint))
    if epoch_dir is None:
        raise ValueError(f"{checkpoint}: give an epoch directory (RUN_DIR/epoch_N), not the run directory")
    tower, info = tuned_tower(epoch_dir)
    _, projector_state = read_image_encoder(epoch_dir)
    provenance = {"run_dir": os.fspath(run_dir), "checkpoint": epoch_dir.name,
                  "source_tower": str(info.tower_args["model_name"]), "output": info.tower_args.get("output", "pooled"),
                  "exported_by": "medcap tools/export_encoder.py"}
    config, state_dict = open_clip_export_files(tower, info.tower_args, info.transform_args, provenance)
    preprocess = config["preprocess_cfg"]
    summary: Dict[str, Any] = {
        "output_dir": os.fspath(output_dir), "text_tower": config["medcap"]["text_tower"],
        "parameters": sum(p.numel() for p in tower.visual.parameters()), "image_size": preprocess["size"],
        "mean": preprocess["mean"], "std": preprocess["std"],
    }
    with atomic_directory(output_dir) as staging:
        write_open_clip_dir(staging, config, state_dict)
        summary["timm"] = write_timm_dir(staging / TIMM_SUBDIR, tower, preprocess["mean"], preprocess["std"]) if with_timm else None
        if projector_state:
            save_file({k: v.contiguous() for k, v in projector_state.items()}, os.fspath(staging / PROJECTOR_WEIGHTS_FILE))
            projector_config = {"config": info.projector_node, "in_dim": tower.out_dim, "tower_output": tower.output,
                                "keys": sorted(projector_state)}
            (staging / PROJECTOR_CONFIG_FILE).write_text(json.dumps(projector_config, indent=2) + "\n")
            summary["projector"] = f"`{info.projector_node.get('_component_', 'projector')}`, {sum(v.numel() for v in projector_state.values()):,} parameters"
        else:
            summary["projector"] = "none in the checkpoint"
        summary["feature_gap"] = check_export(staging, tower)
        (staging / MODEL_CARD_FILE).write_text(model_card(info, epoch_dir, summary, probe_results), encoding="utf-8")
        summary["files"] = sorted(os.fspath(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    return summary
