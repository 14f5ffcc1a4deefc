"""Run by tests/recipes/test_distributed.py under ``torchrun --nproc_per_node 2``: every 2-process scenario in
one launch (one process group, so the ~20 s start-up of two processes is paid once).

Usage: torchrun --nproc_per_node 2 tests/recipes/distributed_worker.py ASSETS_DIR OUT_DIR SINGLE_DEVICE_RUN

Each scenario writes its run under OUT_DIR/<scenario>; what a test cannot read from the files (per-step
replica checks, the errors each rank raised) goes to OUT_DIR/worker_rank{r}.json.
"""

import json
import shutil
import sys
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from helpers import load_script  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from medcap.utils.atomic import atomic_write_json  # noqa: E402

TRAIN_CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_distributed_cpu.yaml"
GENERATE_CONFIG = REPO_ROOT / "recipes/configs/medcap/generate_tiny_cpu.yaml"
# the scenarios' settings, also read by the test for the single-device references
PLAIN = ["batch_size=1", "gradient_accumulation_steps=2", "max_steps_per_epoch=null"]  # 2 x 1 x 2 = 4 samples a step
GROUPED = ["batch_size=2", "group_by_length=True", "enable_activation_checkpointing=True"]  # 2 x 2 = 4 samples a step
PATCH = ["model.vision_tower.output=patch", "model.projector._component_=medcap.models.mlp_projector",
         "model.projector.in_dim=64", "~model.projector.num_tokens"]  # the tower's head.proj never gets a gradient
# one optimizer per parameter; no scheduler: the single-device recipe cannot save a scheduler patched by torchtune's
# in-backward wrapper (a local function in its state)
IN_BACKWARD = ["batch_size=1", "optimizer_in_bwd=True", "clip_grad_norm=null", "lr_scheduler=null"]
GENERATE = ["batch_size=2", "max_new_tokens=4", "checkpoints=all"]


def train_config(assets: Path, output_dir: Path, overrides):
    cfg = OmegaConf.load(TRAIN_CONFIG)
    dotlist = [f"assets_dir={assets}", f"output_dir={output_dir}"]
    for item in overrides:
        if item.startswith("~"):  # as `tune run`'s ~key: delete
            parent, _, key = item[1:].rpartition(".")
            OmegaConf.select(cfg, parent).pop(key)
        else:
            dotlist.append(item)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))


def train(recipe_class, cfg, on_step=None):
    recipe = recipe_class(cfg)
    recipe.setup(cfg)
    if on_step is not None:
        step = recipe._optimizer_step

        def step_and_check(num_tokens):
            grad_norm = step(num_tokens)
            on_step(recipe)
            return grad_norm

        recipe._optimizer_step = step_and_check
    recipe.train()
    recipe._metric_logger is not None and recipe._metric_logger.close()  # the process group stays for the next scenario
    return recipe


def replica_difference(recipe) -> float:
    """The largest difference between rank 0's and this rank's full trainable weights (every rank gathers)."""
    full = torch.cat([p.full_tensor().flatten() for p in recipe._trainable_params])
    views = [torch.empty_like(full) for _ in range(dist.get_world_size())]
    dist.all_gather(views, full)
    return max(float((view - views[0]).abs().max()) for view in views)


def held_bytes(recipe) -> dict:
    """Bytes of decoder weights, trainable weights and optimizer state this rank holds, and their full sizes."""
    def size(tensors, local):
        return sum((t.to_local() if local and hasattr(t, "to_local") else t).numel() * t.element_size() for t in tensors)

    decoder = [p for n, p in recipe._model.named_parameters() if n.startswith("decoder.")]
    state = [v for s in recipe._optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
    return {"decoder": size(decoder, True), "decoder_full": size(decoder, False),
            "trainable": size(recipe._trainable_params, True), "trainable_full": size(recipe._trainable_params, False),
            "optimizer_state": size(state, True), "optimizer_state_full": size(state, False)}


def keep_first_epoch(source: Path, target: Path) -> None:
    """A run stopped after its first epoch: config, logs and epoch_0 only (rank 0 copies)."""
    if dist.get_rank() == 0:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("epoch_1"))
    dist.barrier()


def caught(action) -> str:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the test reads the message
        return f"{type(error).__name__}: {error}"
    return ""


def main(assets: Path, out: Path, single_device_run: Path) -> None:
    recipe_class = load_script("recipes/full_finetune_distributed.py").FullFinetuneRecipeDistributed
    report = {}

    # parity with the single-device run (plain sampler, accumulation), replicas after every step
    differences = []
    plain = train(recipe_class, train_config(assets, out / "plain", PLAIN), on_step=lambda r: differences.append(replica_difference(r)))
    report["replica_max_abs_diff_per_step"] = differences
    report["bytes"] = held_bytes(plain)
    train(recipe_class, train_config(assets, out / "grouped", GROUPED))

    # kill-free resume: the plain run stopped after epoch 0, resumed with 2 processes
    keep_first_epoch(out / "plain", out / "plain_resumed")
    train(recipe_class, train_config(assets, out / "plain_resumed", PLAIN + ["resume_from_checkpoint=True"]))
    # ... and the single-device run (batch 2 x accumulation 2) resumed here with 2 processes of batch 1
    keep_first_epoch(single_device_run, out / "from_single_device")
    train(recipe_class, train_config(assets, out / "from_single_device", PLAIN + ["resume_from_checkpoint=True"]))

    # the optimizer stepping in backward (FSDP2 calls the hooks on the shards), and its resume
    train(recipe_class, train_config(assets, out / "in_backward", IN_BACKWARD))
    keep_first_epoch(out / "in_backward", out / "in_backward_resumed")
    train(recipe_class, train_config(assets, out / "in_backward_resumed", IN_BACKWARD + ["resume_from_checkpoint=True"]))

    # trainable parameters without optimizer state (head.proj is unused with output=patch)
    train(recipe_class, train_config(assets, out / "patch", PATCH))
    keep_first_epoch(out / "patch", out / "patch_resumed")
    train(recipe_class, train_config(assets, out / "patch_resumed", PATCH + ["resume_from_checkpoint=True"]))
    report["torchtune_loader_on_missing_state"] = caught(lambda: torchtune_optimizer_load(recipe_class, assets, out))

    # bad set-ups: every rank gets the same clear error
    report["changed_global_batch"] = caught(lambda: train(
        recipe_class, train_config(assets, out / "plain_resumed", ["batch_size=2", "resume_from_checkpoint=True"])))
    seven = write_dataset(assets, out / "seven_records", num_records=7)  # 7 = 6 + 1: one rank idle in the last step
    report["rank_without_data"] = caught(lambda: train(recipe_class, train_config(
        assets, out / "no_data", [f"dataset.source={seven}", "batch_size=3"])))
    bad_source = write_dataset(assets, out / "bad_data", broken=3)
    report["bad_record"] = caught(lambda: train(recipe_class, train_config(
        assets, out / "bad_record", [f"dataset.source={bad_source}", "dataset.image_check=exists", "shuffle=False"])))

    # data-parallel generation over the plain run's checkpoints
    generate_module = load_script("recipes/generate.py")
    varied = write_dataset(assets, out / "varied", varied=True)
    cfg = OmegaConf.merge(OmegaConf.load(GENERATE_CONFIG), OmegaConf.from_dotlist(
        [f"run_dir={out / 'plain'}", f"output_dir={out / 'generate'}", f"dataset.source={varied}", *GENERATE]))
    recipe = generate_module.GenerationRecipe(cfg)
    recipe.setup(cfg)
    recipe.run()
    # which rank answered which row, in which order (the tiny model's answers are alike, so label them)
    recipe._answer_samples = lambda samples, offset=0: {
        "prediction": [str(offset + i) for i in range(len(samples))], "description": [str(dist.get_rank())] * len(samples)}
    frame = recipe._predict(recipe._build_dataset(cfg).samples[:7])
    report["generation_rows"] = {"row": frame["prediction"].tolist(), "rank": frame["description"].tolist()}

    atomic_write_json(out / f"worker_rank{dist.get_rank()}.json", report)
    dist.destroy_process_group()


def torchtune_optimizer_load(recipe_class, assets: Path, out: Path) -> None:
    """torchtune's load_from_full_optimizer_state_dict on the patch run's epoch_0 (its state lacks head.proj)."""
    from torchtune import training

    from medcap.checkpoint import load_recipe_state

    cfg = train_config(assets, out / "patch_torchtune", PATCH)
    recipe = recipe_class(cfg)
    recipe.setup(cfg)
    saved = load_recipe_state(out / "patch" / "epoch_0")["optimizer"]
    names = [name for name in recipe._trainable_names]
    by_name = {"state": {names[i]: s for i, s in saved["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}
    training.load_from_full_optimizer_state_dict(recipe._model, recipe._optimizer, by_name, torch.device("cpu"))


QUESTIONS = ["Is there a spot?", "What colour is the image?", "How many spots?", "Describe it.", "Where is the spot?",
             "Is it dark?", "Name the shape.", "Is the spot large?"]


def write_dataset(assets: Path, directory: Path, num_records: int = 8, broken: int = -1, varied: bool = False) -> Path:
    """The tiny train set's first ``num_records`` with its images; record ``broken``'s image an empty
    file, which is found only when the record is read; ``varied``: a different question per record
    (so that the tiny model's answers differ from row to row)."""
    path = directory / "train.json"
    if dist.get_rank() == 0:
        records = json.loads((assets / "data/train.json").read_text())[:num_records]
        for record, question in zip(records, QUESTIONS if varied else []):
            record["conversations"][0]["value"] = question
        shutil.copytree(assets / "data/images", directory / "images")
        if broken >= 0:
            (directory / records[broken]["image"]).write_bytes(b"")
        atomic_write_json(path, records)
    dist.barrier()
    return path


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    except Exception:
        traceback.print_exc()
        raise
