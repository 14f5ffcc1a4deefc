"""A model card for an exported tower, written from the run's own files (nothing typed by hand).

Read: ``config.yaml`` (data, LLM, tower, schedule), ``logs/log_*.txt`` (the last logged training loss),
``eval/epoch_N/metrics.json`` when ``recipes/generate.py`` scored that epoch, and any linear-probe
result JSON (``tools/linear_probe.py --json``) the caller names.
"""

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from medcap.export.run import RunInfo

# headline keys of recipes/generate.py's metrics.json, in the order shown
_EVAL_KEYS = ("closed_accuracy", "open_exact_match", "BLEU-4", "ROUGE-L", "CIDEr")


def _records_in(path: Path) -> Optional[int]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return len(data) if isinstance(data, list) else None
    except (OSError, ValueError):
        return None


def last_logged(run_dir: Path, key: str = "loss", max_step: Optional[int] = None) -> Optional[Dict[str, float]]:
    """``{"step", key}`` of the last DiskLogger line holding ``key`` (at or before ``max_step``), or None."""
    found = None
    for log in sorted((Path(run_dir) / "logs").glob("log_*.txt")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            value = re.search(rf"\b{re.escape(key)}:([-0-9.e+]+)", line)
            step = re.search(r"Step (\d+)", line)
            if value and not (max_step is not None and step and int(step.group(1)) > max_step):
                found = {"step": int(step.group(1)) if step else None, key: float(value.group(1))}
    return found


def epoch_end_step(epoch_dir: Path) -> Optional[int]:
    """The global step at which ``epoch_dir`` was saved (its ``recipe_state.pt``), or None."""
    from medcap.checkpoint.io import RECIPE_STATE_FILE, load_recipe_state

    if not (Path(epoch_dir) / RECIPE_STATE_FILE).is_file():
        return None
    return int(load_recipe_state(Path(epoch_dir))["global_step"])


def eval_metrics(run_dir: Path, epoch_name: str) -> Dict[str, Any]:
    """Headline metrics of ``run_dir/eval*/EPOCH/metrics.json`` (``{eval_dir_name: {key: value}}``)."""
    found: Dict[str, Any] = {}
    for metrics_path in sorted(Path(run_dir).glob(f"eval*/{epoch_name}/metrics.json")):
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        headline = {k: metrics[k] for k in _EVAL_KEYS if isinstance(metrics.get(k), (int, float))}
        if headline:
            found[metrics_path.parent.parent.name] = headline
    return found


def model_card(
    info: RunInfo, epoch_dir: Path, export: Dict[str, Any], probe_results: Sequence[Dict[str, Any]] = ()
) -> str:
    """The ``README.md`` of an export directory.

    Args:
        info (RunInfo): the run's settings.
        epoch_dir (Path): the exported ``epoch_N``.
        export (Dict[str, Any]): what was written (``text_tower``, ``timm``, ``parameters``, ``projector``).
        probe_results (Sequence[Dict[str, Any]]): linear-probe result rows to quote.

    Returns:
        str: Markdown.
    """
    cfg = info.config
    epoch_dir = Path(epoch_dir)
    get = lambda key, default=None: OmegaConf.select(cfg, key, default=default)  # noqa: E731
    source = get("dataset.source")
    records = _records_in(Path(source)) if source else None
    decoder = get("model.decoder._component_") or get("model._component_")
    lines: List[str] = [
        f"# Vision encoder fine-tuned by medcap ({info.run_dir.name}/{epoch_dir.name})",
        "",
        "A vision tower trained through a **frozen** language model (medcap: tower + projector train, the LLM does not).",
        "",
        "## Model",
        "",
        f"- tower: `{info.tower_args['model_name']}` ({export['parameters']:,} parameters), trained output "
        f"`{info.tower_args.get('output', 'pooled')}`, input {export['image_size']} px, "
        f"mean {export['mean']}, std {export['std']} (bicubic resize of the short side, center crop)",
        f"- text tower in `open_clip_model.safetensors`: {export['text_tower']}"
        + (" (seeded, untrained: the export is an image encoder, not a zero-shot classifier)" if export["text_tower"] == "placeholder" else ""),
        f"- timm trunk: {'`timm/` (' + export['timm']['architecture'] + ', no projection head)' if export.get('timm') else 'none (not a timm tower)'}",
        f"- projector: `projector.safetensors` ({export['projector']}) maps the tower's output to the LLM's embeddings",
    ]
    if info.tower_args.get("output", "pooled") == "patch":
        lines.append("- trained on patch tokens: `encode_image` passes the pooled map through a projection head this run "
                     "did not train; the trained features are `model.visual.trunk.forward_features(x)` (or the timm trunk's)")
    lines += [
        "",
        "## Training",
        "",
        f"- data: `{source}`" + (f" ({records:,} records)" if records is not None else ""),
        f"- frozen LLM: `{decoder}` from `{get('checkpointer.checkpoint_dir')}`",
        f"- epochs {get('epochs')} (exported: `{epoch_dir.name}`), batch size {get('batch_size')}, "
        f"optimizer `{get('optimizer._component_')}` lr {get('optimizer.lr')}, trainable `{get('trainable', 'encoder_and_projector')}`, seed {get('seed')}",
    ]
    if get("vision_checkpoint"):
        lines.append(f"- initialised from `{get('vision_checkpoint')}`")
    loss = last_logged(info.run_dir, max_step=epoch_end_step(epoch_dir))  # the run may have gone on after this epoch
    if loss:
        lines.append(f"- last logged training loss: {loss['loss']:.4f} (step {loss['step']})")
    lines += ["", "## Metrics", ""]
    evals = eval_metrics(info.run_dir, epoch_dir.name)
    for name, metrics in evals.items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        lines.append(f"- `{name}/{epoch_dir.name}/metrics.json` (recipes/generate.py): {shown}")
    for row in probe_results:
        lines.append(
            f"- linear probe `{row['task']}` ({row['features']} features, tower `{row['tower']}`): accuracy "
            f"{row['accuracy']:.2f} [{row['accuracy_ci_low']:.2f}, {row['accuracy_ci_high']:.2f}], macro-F1 {row['macro_f1']:.2f} "
            f"on {row['n_test']} held-out images"
        )
    if not evals and not probe_results:
        lines.append("- no evaluation files found beside the run (run recipes/generate.py or tools/linear_probe.py)")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import open_clip",
        "model, preprocess = open_clip.create_model_from_pretrained('local-dir:THIS_DIR')",
        "features = model.encode_image(preprocess(image).unsqueeze(0))  # [1, embed_dim]",
    ]
    if export.get("timm"):
        lines += [
            "import timm",
            "trunk = timm.create_model('local-dir:THIS_DIR/timm', pretrained=True)",
            f"trunk = timm.create_model('{export['timm']['architecture']}', pretrained=True, num_classes={export['timm']['num_classes']},",
            "                          pretrained_cfg_overlay=dict(file='THIS_DIR/timm/model.safetensors'))",
        ]
    lines += ["```", ""]
    return "\n".join(lines)
