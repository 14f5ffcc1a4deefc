"""recipes/full_finetune_distributed.py (FSDP2, gloo, 2 CPU processes) against the single-device recipe, and
data-parallel recipes/generate.py against one process.

Every 2-process scenario runs in one torchrun launch (tests/recipes/distributed_worker.py); the
single-device references run here in-process. Equalities are fp32 with tolerance 1e-5.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO_ROOT, load_script, logged_values
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

WORKER = REPO_ROOT / "tests/recipes/distributed_worker.py"
SINGLE_CONFIG = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"
DISTRIBUTED_8B_CONFIG = REPO_ROOT / "recipes/configs/medcap/llama3_1_8B_biomedclip_distributed.yaml"
TOLERANCE = 1e-5
worker_settings = load_script("tests/recipes/distributed_worker.py")  # the scenarios' settings (no process group)


def _single_device(tiny_assets, output_dir: Path, *overrides: str) -> Path:
    cfg = OmegaConf.merge(OmegaConf.load(SINGLE_CONFIG), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"output_dir={output_dir}", *[o for o in overrides if not o.startswith("~")]]))
    for item in [o for o in overrides if o.startswith("~")]:
        parent, _, key = item[1:].rpartition(".")
        OmegaConf.select(cfg, parent).pop(key)
    recipe = load_script("recipes/full_finetune_single_device.py").FullFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()
    return output_dir


def _global_batch(overrides, processes: int = 2):
    """The single-device overrides of a 2-process scenario: the same samples per step."""
    batch = {o.split("=")[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    return [f"batch_size={int(batch['batch_size']) * processes}", *[o for o in overrides if not o.startswith("batch_size=")]]


@pytest.fixture(scope="module")
def single_device(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("single_device")
    return {
        "plain": _single_device(tiny_assets, root / "plain", *_global_batch(worker_settings.PLAIN)),
        "grouped": _single_device(tiny_assets, root / "grouped", *_global_batch(worker_settings.GROUPED)),
        "patch": _single_device(tiny_assets, root / "patch", "batch_size=2", *worker_settings.PATCH),
        "in_backward": _single_device(tiny_assets, root / "in_backward", *_global_batch(worker_settings.IN_BACKWARD)),
    }


@pytest.fixture(scope="module")
def two_processes(tiny_assets, single_device, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(tiny_assets["root"]), str(out), str(single_device["plain"])]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    reports = [json.loads((out / f"worker_rank{rank}.json").read_text()) for rank in (0, 1)]
    return out, reports


def _weights(run: Path, epoch: int = 1):
    return load_file(run / f"epoch_{epoch}" / "image_encoder.safetensors")


def _max_abs_diff(a, b) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_ranks_take_exactly_the_samples_of_the_single_device_step(group_by_length):
    from torch.utils.data import DataLoader, DistributedSampler

    from medcap.data import build_sampler
    from medcap.data.rank_sampler import RankSliceSampler

    class Lengths:  # what the samplers read of a dataset
        lengths = [(7 * i) % 11 for i in range(22)]

        def __len__(self):
            return 22

    dataset = Lengths()
    single = build_sampler(dataset, 8, shuffle=True, group_by_length=group_by_length, seed=3)
    single.set_epoch(1)
    steps = [batch.tolist() for batch in DataLoader(list(range(22)), batch_size=8, sampler=single)]
    ranks = []
    for rank in (0, 1):
        sampler = RankSliceSampler(build_sampler(dataset, 8, shuffle=True, group_by_length=group_by_length, seed=3), 4, 2, rank)
        sampler.set_epoch(1)
        ranks.append([batch.tolist() for batch in DataLoader(list(range(22)), batch_size=4, sampler=sampler)])
        assert len(sampler) == sum(len(batch) for batch in ranks[-1])
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(step) for step in steps]  # 8, 8, then 6 = 3 + 3
    assert [len(batch) for batch in ranks[1]] == [4, 4, 3]
    if not group_by_length:  # no uneven tail: torch's DistributedSampler order
        torch_sampler = DistributedSampler(list(range(16)), num_replicas=2, rank=1, shuffle=True, seed=3)
        ours = RankSliceSampler(DistributedSampler(list(range(16)), num_replicas=1, rank=0, shuffle=True, seed=3), 4, 2, 1)
        assert list(ours) == list(torch_sampler)
    assert len(RankSliceSampler(range(23), 4, 2, 1)) == 11  # the last 7: 4 + 3
    with pytest.raises(ValueError, match=r"17 samples .* leave 1 sample\(s\) for the last step, so rank 1 and above"):
        RankSliceSampler(range(17), 4, 2, 0)


def test_config_keys_are_the_single_device_recipe_s():
    single = load_script("recipes/full_finetune_single_device.py").CONFIG_KEYS
    assert load_script("recipes/full_finetune_distributed.py").CONFIG_KEYS == single


@pytest.mark.parametrize("scenario", ["plain", "grouped", "in_backward"])
def test_two_processes_equal_single_device_with_the_global_batch(two_processes, single_device, scenario):
    out, _ = two_processes
    single, distributed = logged_values(single_device[scenario]), logged_values(out / scenario)
    assert len(distributed) == 4
    assert distributed == pytest.approx(single, abs=TOLERANCE)
    for epoch in (0, 1):
        difference = _max_abs_diff(_weights(out / scenario, epoch), _weights(single_device[scenario], epoch))
        print(f"{scenario} epoch_{epoch}: max |w_2proc - w_1proc| = {difference:.3g}")
        assert difference <= TOLERANCE
    assert _max_abs_diff(_weights(out / scenario), _weights(out / scenario, 0)) > 1e-4  # it trained


def test_tiny_distributed_config_is_tiny_cpu_batch_split_over_two():
    """tiny_distributed_cpu.yaml differs from tiny_cpu.yaml only in output_dir and batch_size (2 x 1)."""
    single = OmegaConf.to_container(OmegaConf.load(SINGLE_CONFIG), resolve=False)
    distributed = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "recipes/configs/medcap/tiny_distributed_cpu.yaml"), resolve=False)
    differing = sorted(key for key in set(single) | set(distributed) if single.get(key) != distributed.get(key))
    assert differing == ["batch_size", "output_dir"]
    assert distributed["batch_size"] * 2 == single["batch_size"]


def test_both_ranks_hold_identical_weights_after_every_step(two_processes):
    _, reports = two_processes
    for report in reports:
        assert report["replica_max_abs_diff_per_step"] == [0.0] * 4


def test_decoder_trainable_part_and_optimizer_state_are_sharded_over_the_ranks(two_processes):
    _, reports = two_processes
    for what in ("decoder", "trainable", "optimizer_state"):
        held = [report["bytes"][what] for report in reports]
        full = reports[0]["bytes"][f"{what}_full"]
        assert sum(held) == full and max(held) <= full / 2 * 1.02, (what, held, full)  # dim-0 chunks: ~half each


@pytest.mark.parametrize("scenario", ["plain", "in_backward"])
def test_resume_with_two_processes_equals_uninterrupted(two_processes, scenario):
    out, _ = two_processes
    assert _max_abs_diff(_weights(out / f"{scenario}_resumed"), _weights(out / scenario)) == 0.0
    assert logged_values(out / f"{scenario}_resumed")[-2:] == logged_values(out / scenario)[-2:]


def test_resume_with_one_process_equals_uninterrupted(two_processes, single_device, tiny_assets, tmp_path):
    out, _ = two_processes
    shutil.copytree(out / "plain", tmp_path / "run", ignore=shutil.ignore_patterns("epoch_1", "logs"))
    _single_device(tiny_assets, tmp_path / "run", *_global_batch(worker_settings.PLAIN), "resume_from_checkpoint=True")
    assert _max_abs_diff(_weights(tmp_path / "run"), _weights(out / "plain")) <= TOLERANCE
    assert logged_values(tmp_path / "run") == pytest.approx(logged_values(out / "plain")[-2:], abs=TOLERANCE)


def test_two_processes_resume_a_single_device_checkpoint(two_processes, single_device):
    out, _ = two_processes
    assert _max_abs_diff(_weights(out / "from_single_device"), _weights(single_device["plain"])) <= TOLERANCE


def test_resume_when_some_trainable_parameters_never_got_a_gradient(two_processes, single_device):
    out, reports = two_processes
    unused = [name for name in _weights(out / "patch", 0) if ".head.proj." in name]
    state = torch.load(out / "patch" / "epoch_0" / "recipe_state.pt", weights_only=True)["optimizer"]
    trainable = [p for group in state["param_groups"] for p in group["params"]]
    assert unused and len(state["state"]) == len(trainable) - len(unused)  # head.proj: no gradient, no state
    assert _max_abs_diff(_weights(out / "patch_resumed"), _weights(out / "patch")) == 0.0
    assert _max_abs_diff(_weights(out / "patch"), _weights(single_device["patch"])) <= TOLERANCE
    # torchtune 0.6.1's own loader fails on exactly this (hiyouga/EasyR1 #275): why the recipe loads its own way
    assert reports[0]["torchtune_loader_on_missing_state"].startswith("KeyError: 'image_encoder.vision_tower.visual.head.proj")


def test_checkpoints_are_the_single_device_recipe_s_files(two_processes, single_device):
    out, _ = two_processes
    for epoch in (0, 1):
        ours, theirs = out / "plain" / f"epoch_{epoch}", single_device["plain"] / f"epoch_{epoch}"
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
        with safe_open(ours / "image_encoder.safetensors", "pt") as a, safe_open(theirs / "image_encoder.safetensors", "pt") as b:
            assert a.metadata() == b.metadata() == {"epoch": str(epoch), "format": "medcap"}
        state = torch.load(ours / "recipe_state.pt", weights_only=True)
        reference = torch.load(theirs / "recipe_state.pt", weights_only=True)
        assert set(reference) <= set(state) and state["world_size"] == 2 and state["global_batch_size"] == 2
        assert state["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
        assert sorted(state["optimizer"]["state"]) == sorted(reference["optimizer"]["state"])
        for index, entry in reference["optimizer"]["state"].items():
            for key, value in entry.items():
                assert torch.allclose(state["optimizer"]["state"][index][key], value, atol=TOLERANCE), (index, key)
    assert not list((out / "plain").rglob("*.tmp"))


def test_bad_set_ups_stop_every_rank_with_a_clear_error(two_processes):
    out, reports = two_processes
    for report in reports:  # each rank raised the same message
        assert "batch_size x processes = 2" in report["changed_global_batch"]
        assert "vision_checkpoint=" in report["changed_global_batch"]
        assert "7 samples in batches of batch_size=3 x 2 ranks = 6 leave 1 sample(s)" in report["rank_without_data"]
        assert "rank 1 and above would have no data" in report["rank_without_data"]
        assert report["bad_record"].startswith("RuntimeError: stopped every rank: reading batch 1 of epoch 0 failed on rank 1")
        assert "bad_data/train.json" in report["bad_record"] and "record 3" in report["bad_record"]
    assert not (out / "bad_record" / "epoch_0").exists()


def test_launch_without_torchrun_says_how_to_launch(tiny_assets, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = worker_settings.train_config(tiny_assets["root"], tmp_path, [])
    recipe_class = load_script("recipes/full_finetune_distributed.py").FullFinetuneRecipeDistributed
    with pytest.raises(RuntimeError, match=r"torchrun --nproc_per_node N recipes/full_finetune_distributed.py --config"):
        recipe_class(cfg)


def _generate(tiny_assets, run_dir: Path, output_dir: Path, *overrides: str, source=None):
    cfg = OmegaConf.merge(OmegaConf.load(worker_settings.GENERATE_CONFIG), OmegaConf.from_dotlist(
        [f"run_dir={run_dir}", f"output_dir={output_dir}", f"dataset.source={source or tiny_assets['data']}",
         *worker_settings.GENERATE, *overrides]))
    recipe = load_script("recipes/generate.py").GenerationRecipe(cfg)
    recipe.setup(cfg)
    recipe.run()
    recipe.cleanup()


def test_distributed_generation_writes_what_one_process_writes(two_processes, tiny_assets, tmp_path):
    out, reports = two_processes
    _generate(tiny_assets, out / "plain", tmp_path, source=out / "varied" / "train.json")
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(out / "generate")) for p in (out / "generate").rglob("*") if p.is_file())
    for name in ("base", "epoch_0", "epoch_1"):
        ours = (out / "generate" / name / "predictions.csv").read_bytes()
        assert ours == (tmp_path / name / "predictions.csv").read_bytes()
        assert len(pd.read_csv(tmp_path / name / "predictions.csv")) == 8
        a, b = (json.loads((d / name / "metrics.json").read_text()) for d in (out / "generate", tmp_path))
        assert {k: v for k, v in a.items() if k != "samples_per_second"} == {k: v for k, v in b.items() if k != "samples_per_second"}
    # the tiny model answers alike in every row: with labelled answers, rank 0 answers rows 0-3 (two batches of 2)
    # and rank 1 rows 4-6, and every rank ends with all rows in file order
    for report in reports:
        assert report["generation_rows"] == {"row": [str(i) for i in range(7)], "rank": ["0"] * 4 + ["1"] * 3}


def test_generate_rerun_skips_complete_checkpoints(tiny_assets, single_device, tmp_path, caplog):
    _generate(tiny_assets, single_device["plain"], tmp_path)
    written = {name: (tmp_path / name / "predictions.csv").stat().st_mtime_ns for name in ("base", "epoch_0", "epoch_1")}
    table = (tmp_path / "metrics_by_epoch.csv").read_text()
    (tmp_path / "epoch_1" / "metrics.json").unlink()  # killed before epoch_1 was complete
    caplog.clear()
    with caplog.at_level("INFO", logger="medcap"):
        _generate(tiny_assets, single_device["plain"], tmp_path)
    skipped = sorted(r.getMessage().split(":")[0] for r in caplog.records if "skipped, outputs complete" in r.getMessage())
    assert skipped == ["base", "epoch_0"]
    assert {n: (tmp_path / n / "predictions.csv").stat().st_mtime_ns for n in ("base", "epoch_0")} == {n: written[n] for n in ("base", "epoch_0")}
    assert (tmp_path / "epoch_1" / "predictions.csv").stat().st_mtime_ns > written["epoch_1"]
    pd.testing.assert_frame_equal(_drop_speed(table), _drop_speed((tmp_path / "metrics_by_epoch.csv").read_text()))


def _drop_speed(csv_text: str) -> pd.DataFrame:
    from io import StringIO

    return pd.read_csv(StringIO(csv_text)).drop(columns=["samples_per_second"])


def test_generate_redoes_a_checkpoint_with_other_settings(tiny_assets, single_device, tmp_path, caplog):
    _generate(tiny_assets, single_device["plain"], tmp_path)
    with caplog.at_level("INFO", logger="medcap"):
        _generate(tiny_assets, single_device["plain"], tmp_path, "max_new_tokens=2")
    assert not [r for r in caplog.records if "skipped, outputs complete" in r.getMessage()]
    assert sum("with other generation settings" in r.getMessage() for r in caplog.records) == 3


def test_8b_distributed_config_builds_on_the_meta_device():
    """The 8-GPU config's model on the meta device: the counts behind README_FINETUNE.md's memory table."""
    from medcap import config as medcap_config

    cfg = OmegaConf.load(DISTRIBUTED_8B_CONFIG)
    assert (cfg.batch_size, cfg.model_transform.max_seq_len, cfg.dtype, cfg.enable_activation_checkpointing) == (8, 1000, "bf16", True)
    assert cfg.device == "cuda" and not str(cfg.optimizer._component_).startswith("bitsandbytes")
    cfg.model.vision_model = "timm:vit_base_patch16_224"  # BiomedCLIP's tower architecture, no hub access
    with torch.device("meta"):
        model = medcap_config.instantiate(cfg.model)
    decoder = sum(p.numel() for p in model.decoder.parameters())
    tower = sum(p.numel() for p in model.image_encoder.vision_tower.parameters())
    projector = sum(p.numel() for p in model.image_encoder.projector.parameters())
    assert (decoder, tower, projector) == (8_030_261_248, 86_191_872, 539_103_232)
    assert model.num_image_tokens == 32


@pytest.mark.slow
def test_tune_run_nproc_per_node_cli(tiny_assets, tmp_path):
    """The documented launch: ``tune run --nproc_per_node 2`` on tiny_distributed_cpu.yaml (= tiny_cpu's losses)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    tune = Path(sys.executable).parent / "tune"
    command = [str(tune), "run", "--nproc_per_node", "2", "recipes/full_finetune_distributed.py", "--config",
               "recipes/configs/medcap/tiny_distributed_cpu.yaml", f"assets_dir={tiny_assets['root']}", f"output_dir={tmp_path}"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    golden = load_script("tests/recipes/test_full_finetune_single_device.py").GOLDEN_LOSSES
    assert logged_values(tmp_path) == pytest.approx(golden, abs=TOLERANCE)
