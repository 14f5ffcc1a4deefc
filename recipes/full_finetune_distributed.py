"""Train a vision tower + projector in front of a frozen decoder on many devices and nodes (FSDP2, torchrun).

Launch (from the repository root), one process per device::

    torchrun --nproc_per_node 2 recipes/full_finetune_distributed.py --config recipes/configs/medcap/tiny_distributed_cpu.yaml
    PYTHONPATH=. tune run --nproc_per_node 8 recipes/full_finetune_distributed.py --config recipes/configs/medcap/llama3_1_8B_biomedclip_distributed.yaml
    # several nodes: the same command on every node
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 recipes/full_finetune_distributed.py --config ...

Every config key means what it means in ``recipes/full_finetune_single_device.py`` (a config runs on
either recipe); ``batch_size`` is per process, so a step trains ``batch_size x processes x
gradient_accumulation_steps`` samples, exactly the samples of the single-device step with that batch.
The frozen decoder is built on the meta device and sharded with FSDP2 (each layer, then the root), so
an 8B decoder costs ~16 GB / N of bf16 weights per GPU; the vision tower and the projector are FSDP2
units too, their gradients reduce-scattered across ranks. Checkpoints are the single-device recipe's
files (``epoch_{n}/image_encoder.safetensors`` + ``recipe_state.pt`` with the full optimizer state),
written once by rank 0; they resume with any number of processes and load in either recipe and in
``recipes/generate.py``.
"""

import logging
import math
import os
import random
import resource
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

if __package__ in (None, ""):  # `python recipes/x.py` / torchrun: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader
from torchtune import config, modules, training
from torchtune.config._utils import _get_component_from_path
from tqdm import tqdm

from medcap import config as medcap_config
from medcap.checkpoint import atomic_write, load_image_encoder_weights, load_recipe_state, save_recipe_state
from medcap.checkpoint.decoder import load_decoder_state
from medcap.data import build_sampler, check_transform_fits_model
from medcap.data.rank_sampler import RankSliceSampler
from medcap.models import set_train_mode, set_trainable
from medcap.training import optimizer_param_groups
from medcap.training.distributed import (
    all_reduce_sum,
    broadcast_module_state,
    full_optimizer_state,
    gather_image_encoder_state,
    gather_objects,
    init_process_group,
    load_full_optimizer_state,
    load_sharded_decoder,
    raise_on_any_rank,
    save_image_encoder_state,
    shard_medcap_model,
)

log = logging.getLogger("medcap")
RECIPE = "recipes/full_finetune_distributed.py"

# every top-level key this recipe reads: the single-device recipe's, one for one (a test keeps them equal)
CONFIG_KEYS = (
    "output_dir", "model", "model_transform", "checkpointer", "dataset", "loss", "collate_fn", "seed", "shuffle",
    "group_by_length", "batch_size", "epochs", "max_steps_per_epoch", "gradient_accumulation_steps", "num_workers",
    "trainable", "trainable_last_k_blocks", "vision_checkpoint", "resume_from_checkpoint", "optimizer", "optimizer_groups",
    "optimizer_in_bwd", "lr_scheduler", "clip_grad_norm", "device", "dtype", "enable_activation_checkpointing",
    "metric_logger", "log_every_n_steps", "log_peak_memory_stats",
)


class FullFinetuneRecipeDistributed:
    """Trains the image side of a :class:`~medcap.models.MedcapModel` data-parallel; the decoder stays frozen.

    Same components and knobs as ``FullFinetuneRecipeSingleDevice`` (see its docstring); what differs:

    * ``batch_size`` is per process; the samplers (plain shuffle and ``group_by_length``) give each
      rank its slice of every global batch (:class:`~medcap.data.rank_sampler.RankSliceSampler`), so
      the loss of a step and its gradient (the sum over every rank's labelled tokens divided by their
      total count) are the single-device ones with a ``processes`` times larger batch.
    * The initial image encoder is the one the single-device recipe builds with the same seed: rank 0
      builds the model as that recipe does and broadcasts the image encoder; the sharded model itself
      is built on the meta device and its decoder loaded from the checkpointer, shard by shard.
    * Rank 0 logs (loss, lr, grad norm, tokens/s summed over ranks, the peak memory of every rank) and
      writes the checkpoints; every rank takes part in gathering them.
    * A bitsandbytes optimizer is refused (its 8-bit state is blockwise, FSDP2 shards parameters).
    """

    def __init__(self, cfg: DictConfig) -> None:
        medcap_config.check_config_keys(cfg, CONFIG_KEYS, "full_finetune_distributed")
        self._device, self._world_size, self._rank = init_process_group(str(cfg.device), RECIPE)
        self._is_rank_zero = self._rank == 0
        if not self._is_rank_zero:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for all
        self._dtype = training.get_dtype(cfg.dtype, device=self._device)
        self._output_dir = Path(cfg.output_dir)
        self._seed = training.set_seed(seed=cfg.seed)  # seed + rank on each rank; rank 0 has the single-device seed
        self.epochs = cfg.epochs
        self.max_steps_per_epoch = cfg.get("max_steps_per_epoch", None)
        self._batch_size = cfg.batch_size
        self._gradient_accumulation_steps = cfg.get("gradient_accumulation_steps", 1)
        self._optimizer_in_bwd = cfg.get("optimizer_in_bwd", False)
        self._clip_grad_norm = cfg.get("clip_grad_norm", None)
        self._log_every_n_steps = cfg.get("log_every_n_steps", 1)
        scheduler_cfg = cfg.get("lr_scheduler", None)
        self._cfg_has_scheduler = scheduler_cfg is not None and scheduler_cfg.get("_component_") is not None
        self._log_peak_memory_stats = cfg.get("log_peak_memory_stats", True)
        self._resume_from_checkpoint = cfg.get("resume_from_checkpoint", False)
        if self._optimizer_in_bwd and (self._gradient_accumulation_steps > 1 or self._clip_grad_norm):
            raise ValueError("optimizer_in_bwd=True needs gradient_accumulation_steps=1 and clip_grad_norm=null")
        if str(cfg.optimizer.get("_component_", "")).startswith("bitsandbytes."):
            raise ValueError(
                f"optimizer {cfg.optimizer._component_}: bitsandbytes optimizers keep blockwise 8-bit state that FSDP2's "
                "sharded parameters do not support; use torch.optim.AdamW (its state is sharded over the processes)"
            )
        for key in ("decoder_quantization", "decoder_lora"):  # the single-device recipe's decoder options (issue 13)
            if cfg.model.get(key, None):
                raise NotImplementedError(
                    f"model.{key}: a quantized or LoRA-wrapped decoder is not sharded by the distributed recipe yet; "
                    "train it with recipes/full_finetune_single_device.py, or drop the key"
                )
        self.epochs_run = 0
        self.global_step = 0

    def setup(self, cfg: DictConfig) -> None:
        """Build model, data, optimizer, scheduler and logger; restore state when resuming."""
        self._metric_logger = medcap_config.instantiate(cfg.metric_logger) if self._is_rank_zero else None
        if self._metric_logger is not None:
            self._metric_logger.log_config(cfg)
        state = self._latest_state() if self._resume_from_checkpoint else None

        self._model = self._setup_model(cfg, state_dir=state["_dir"] if state else None)
        transform = medcap_config.instantiate(cfg.model_transform, num_image_tokens=self._model.num_image_tokens)
        check_transform_fits_model(transform, self._model)
        self._tokenizer = transform.tokenizer
        self._dataset = medcap_config.instantiate(cfg.dataset, model_transform=transform)
        global_order = build_sampler(  # the single-device order for the global batch
            self._dataset, cfg.batch_size * self._world_size, shuffle=cfg.get("shuffle", True),
            group_by_length=cfg.get("group_by_length", False), seed=cfg.seed,
        )
        self._sampler = RankSliceSampler(global_order, cfg.batch_size, num_replicas=self._world_size, rank=self._rank)
        collate_fn = _get_component_from_path(cfg.get("collate_fn", "medcap.data.padded_collate_images"))
        self._dataloader = DataLoader(
            self._dataset,
            batch_size=cfg.batch_size,
            sampler=self._sampler,
            num_workers=cfg.get("num_workers", 0),
            collate_fn=partial(collate_fn, pad_id=self._tokenizer.pad_id),
            drop_last=False,
        )
        self._loss_fn = medcap_config.instantiate(cfg.loss)

        self._setup_optimizer(cfg.optimizer, cfg.get("optimizer_groups", None))
        steps_per_epoch = math.ceil(len(self._dataloader) / self._gradient_accumulation_steps)
        if self.max_steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, self.max_steps_per_epoch)
        self._steps_per_epoch = steps_per_epoch
        self._lr_scheduler = self._setup_lr_scheduler(cfg.get("lr_scheduler", None), steps_per_epoch * self.epochs)
        if state is not None:
            self._restore(state)
        if self._is_rank_zero:
            atomic_write(self._output_dir / "config.yaml", lambda temp: OmegaConf.save(cfg, temp, resolve=True))
        log.info(
            "%d processes (%s, %s); trainable parameters: %s (%s tensors); dataset %s: %d samples, %d skipped; "
            "global batch %d x %d processes x %d accumulation",
            self._world_size, self._device.type, dist.get_backend(), f"{sum(p.numel() for p in self._trainable_params):,}",
            len(self._trainable_params), self._dataset.source, len(self._dataset), len(self._dataset.skipped),
            cfg.batch_size, self._world_size, self._gradient_accumulation_steps,
        )

    def _setup_model(self, cfg: DictConfig, state_dir: Optional[Path]) -> torch.nn.Module:
        reference = None
        if self._is_rank_zero:  # the single-device build: the same initial image encoder for the same seed
            with training.set_default_dtype(self._dtype), self._device:
                reference = medcap_config.instantiate(cfg.model)
        with training.set_default_dtype(self._dtype), torch.device("meta"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")  # tower weights: rank 0's below
            model = medcap_config.instantiate(cfg.model)
        broadcast_module_state(model.image_encoder, reference.image_encoder if reference is not None else None, self._device)
        del reference
        vision_checkpoint = state_dir or cfg.get("vision_checkpoint", None)
        if vision_checkpoint:
            load_image_encoder_weights(Path(vision_checkpoint), model.image_encoder)
            log.info("Image encoder initialised from %s", vision_checkpoint)
        self._trainable_names = set_trainable(model, cfg.get("trainable", "encoder_and_projector"), cfg.get("trainable_last_k_blocks", None))
        if cfg.get("enable_activation_checkpointing", False):
            training.set_activation_checkpointing(model.decoder, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
        # FSDP2 warns that a unit returns a view (the tower's and projector's reshapes); their outputs are
        # only read out of place (masked_scatter), which is the safe use the warning asks for
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        shard_medcap_model(model)
        load_sharded_decoder(model, load_decoder_state(cfg.checkpointer), self._device, source=str(cfg.checkpointer.checkpoint_dir))
        set_train_mode(model)  # frozen modules (the decoder, frozen tower blocks and their BatchNorms) stay in eval
        named = dict(model.named_parameters())
        self._trainable_params = [named[name] for name in self._trainable_names]
        return model

    def _setup_optimizer(self, cfg_optimizer: DictConfig, cfg_groups: Optional[DictConfig]) -> None:
        named = dict(self._model.named_parameters())
        groups = OmegaConf.to_container(cfg_groups, resolve=True) if cfg_groups else {}
        param_groups = optimizer_param_groups(named, self._trainable_names, groups)
        if self._optimizer_in_bwd:
            if groups and self._cfg_has_scheduler:
                raise ValueError(
                    "optimizer_groups with optimizer_in_bwd=True and an lr_scheduler: torchtune's in-backward "
                    "wrapper gives every parameter the first group's rate; drop one of the three"
                )
            overrides = {id(p): {k: v for k, v in g.items() if k not in ("params", "name")} for g in param_groups for p in g["params"]}
            optim_dict = {p: medcap_config.instantiate(cfg_optimizer, [p], **overrides[id(p)]) for p in self._trainable_params}
            training.register_optim_in_bwd_hooks(model=self._model, optim_dict=optim_dict)  # FSDP2 calls them on the shards
            self._optim_wrapper = training.OptimizerInBackwardWrapper({n: optim_dict[named[n]] for n in self._trainable_names})
            self._optimizer = None
        else:
            self._optimizer = medcap_config.instantiate(cfg_optimizer, param_groups)

    def _setup_lr_scheduler(self, cfg_lr_scheduler: Optional[DictConfig], num_training_steps: int):
        if cfg_lr_scheduler is None or cfg_lr_scheduler.get("_component_") is None:
            return None
        optimizer = next(iter(self._optim_wrapper.optim_map.values())) if self._optimizer_in_bwd else self._optimizer
        scheduler = medcap_config.instantiate(cfg_lr_scheduler, optimizer, num_training_steps=num_training_steps)
        if self._optimizer_in_bwd:
            self._optim_wrapper.set_lr_scheduler(scheduler)
        return scheduler

    def _latest_state(self) -> Dict[str, Any]:
        epochs = sorted(
            (int(p.name.split("_")[1]), p) for p in self._output_dir.glob("epoch_*") if p.name.split("_")[1].isdigit()
        )
        if not epochs:
            raise FileNotFoundError(f"resume_from_checkpoint=True but {self._output_dir} holds no epoch_* checkpoint")
        state = load_recipe_state(epochs[-1][1])
        state["_dir"] = epochs[-1][1]
        self._check_resumable(state)
        return state

    def _check_resumable(self, state: Dict[str, Any]) -> None:
        """Refuse a launch whose global batch differs from the checkpoint's: the data order, the samples
        of each step and the schedule's steps per epoch would not be the recorded run's."""
        accumulation = self._gradient_accumulation_steps
        recorded = state.get("global_batch_size")  # samples per loader step over all ranks; absent: single-device run
        if recorded is None:
            log.warning(
                "%s was written by the single-device recipe, which does not record its batch size: the run continues "
                "exactly only if batch_size x %d processes equals that run's batch_size", state["_dir"], self._world_size,
            )
            return
        here = self._batch_size * self._world_size
        if recorded == here and state.get("gradient_accumulation_steps", accumulation) == accumulation:
            return
        counts = [n for n in range(1, recorded + 1) if recorded % n == 0]
        raise ValueError(
            f"{state['_dir']} was trained with batch_size={recorded // state['world_size']} x {state['world_size']} "
            f"processes = {recorded} samples per step (gradient_accumulation_steps={state.get('gradient_accumulation_steps')}); "
            f"this launch has batch_size={self._batch_size} x {self._world_size} = {here} "
            f"(gradient_accumulation_steps={accumulation}). The epoch's data order and steps would not be the recorded "
            f"run's. Resume with batch_size x processes = {recorded} (processes in {counts}; with 1 process use the "
            f"single-device recipe with batch_size={recorded}) and the same accumulation, or start a new run from its "
            f"weights with vision_checkpoint={state['_dir']} (the optimizer state is not carried over)"
        )

    def _restore(self, state: Dict[str, Any]) -> None:
        if state["seed"] != self._seed or state["total_epochs"] != self.epochs or state["max_steps_per_epoch"] != self.max_steps_per_epoch:
            log.warning("Resuming with changed seed/epochs/max_steps_per_epoch: the run will not match an uninterrupted one")
        self.epochs_run, self.global_step = state["epochs_run"], state["global_step"]
        if self._optimizer_in_bwd:
            for name, optimizer in self._optim_wrapper.optim_map.items():
                load_full_optimizer_state(optimizer, state["optimizer"][name])
        else:
            load_full_optimizer_state(self._optimizer, state["optimizer"])
        if self._lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self._lr_scheduler.load_state_dict(state["lr_scheduler"])
        by_rank = state.get("rng_by_rank")
        if by_rank is not None and len(by_rank) == self._world_size:  # every rank continues its own stream
            rng_cpu, rng_cuda, rng_python = by_rank[self._rank]
        elif self._is_rank_zero:  # another world size (or a single-device run): rank 0 continues the recorded one
            rng_cpu, rng_cuda, rng_python = state["rng_cpu"], (state.get("rng_cuda") or [None])[0], state["rng_python"]
        else:
            rng_cpu = None
        if rng_cpu is not None:
            torch.set_rng_state(rng_cpu)
            if self._device.type == "cuda" and rng_cuda is not None:
                torch.cuda.set_rng_state(rng_cuda, self._device)
            random.setstate(rng_python)
        log.info("Resumed from %s: %d epochs done, step %d", state["_dir"], self.epochs_run, self.global_step)

    def save_checkpoint(self, epoch: int) -> None:
        """Gather the image encoder and the optimizer state; rank 0 saves them (atomic writes)."""
        epoch_dir = self._output_dir / f"epoch_{epoch}"
        encoder_state = gather_image_encoder_state(self._model, self._is_rank_zero)
        if self._optimizer_in_bwd:
            optimizer_state = {
                name: full_optimizer_state(self._model, optimizer, self._is_rank_zero)
                for name, optimizer in self._optim_wrapper.optim_map.items()
            }
        else:
            optimizer_state = full_optimizer_state(self._model, self._optimizer, self._is_rank_zero)
        rng_cuda = torch.cuda.get_rng_state(self._device) if self._device.type == "cuda" else None
        rng_by_rank = gather_objects((torch.get_rng_state(), rng_cuda, random.getstate()))
        if self._is_rank_zero:
            save_image_encoder_state(encoder_state, epoch_dir, metadata={"epoch": str(epoch), "format": "medcap"})
            save_recipe_state(
                {
                    "epochs_run": epoch + 1,
                    "global_step": self.global_step,
                    "seed": self._seed,
                    "total_epochs": self.epochs,
                    "max_steps_per_epoch": self.max_steps_per_epoch,
                    "optimizer": optimizer_state,
                    "lr_scheduler": _scheduler_state(self._lr_scheduler),
                    "rng_cpu": rng_by_rank[0][0],
                    "rng_cuda": [rng_by_rank[0][1]] if rng_by_rank[0][1] is not None else None,
                    "rng_python": rng_by_rank[0][2],
                    # the distributed recipe's additions (the single-device recipe ignores them)
                    "world_size": self._world_size,
                    "global_batch_size": self._batch_size * self._world_size,
                    "gradient_accumulation_steps": self._gradient_accumulation_steps,
                    "rng_by_rank": rng_by_rank,
                },
                epoch_dir,
            )
            log.info("Saved %s", epoch_dir)
        dist.barrier()

    def train(self) -> None:
        """Run the epochs; rank 0 logs loss, lr, tokens/s and peak memory; save after every epoch."""
        accumulation = self._gradient_accumulation_steps
        for epoch in range(self.epochs_run, self.epochs):
            self._sampler.set_epoch(epoch)
            show = self._is_rank_zero and (sys.stderr.isatty() or os.environ.get("MEDCAP_PROGRESS") == "1")
            progress = tqdm(total=self._steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not show)
            loss_sum, num_tokens, seen_tokens, t0 = 0.0, 0, 0, time.perf_counter()
            step_in_epoch = 0
            batches = iter(self._dataloader)
            for index in range(len(self._dataloader)):
                if step_in_epoch >= self._steps_per_epoch:
                    break
                batch, error = None, None
                try:
                    batch = next(batches)
                except Exception as caught:  # a bad record: every rank stops, naming it
                    error = caught
                raise_on_any_rank(error, f"reading batch {index} of epoch {epoch}", self._device)
                tokens = batch["tokens"].to(self._device)  # [b, s]
                labels = batch["labels"].to(self._device)  # [b, s]
                images = batch["images"].to(self._device, self._dtype) if batch["images"] is not None else None
                hidden = self._model(tokens, images=images)  # [b, s, d]
                batch_loss, batch_tokens = self._loss_fn(hidden, labels, self._model.lm_head)
                seen_tokens += int((tokens != self._tokenizer.pad_id).sum())
                if self._optimizer_in_bwd:  # FSDP2 averages over ranks: scale to this rank's share of the global mean
                    global_batch_tokens = all_reduce_sum([batch_tokens], self._device)[0]
                    (batch_loss * self._world_size / max(global_batch_tokens, 1)).backward()
                else:
                    batch_loss.backward()  # gradients are divided by the tokens of the whole step below
                loss_sum += batch_loss.item()
                num_tokens += batch_tokens
                if (index + 1) % accumulation != 0 and index + 1 != len(self._dataloader):
                    continue
                loss_sum, num_tokens, seen_tokens = all_reduce_sum([loss_sum, num_tokens, seen_tokens], self._device)
                lr = self._current_lr()  # the rate this step uses
                grad_norm = self._optimizer_step(num_tokens)
                step_in_epoch += 1
                self.global_step += 1
                loss = loss_sum / max(num_tokens, 1)
                elapsed = time.perf_counter() - t0
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{seen_tokens / elapsed:.0f}")
                if self.global_step % self._log_every_n_steps == 0:
                    self._log(loss, lr, grad_norm, seen_tokens / elapsed)
                loss_sum, num_tokens, seen_tokens, t0 = 0.0, 0, 0, time.perf_counter()
            progress.close()
            self.epochs_run = epoch + 1
            self.save_checkpoint(epoch)

    def _optimizer_step(self, num_tokens: float) -> Optional[torch.Tensor]:
        grad_norm = None
        if not self._optimizer_in_bwd:
            # FSDP2 reduce-scatter averaged the ranks' summed gradients: x world size / all labelled tokens of the step
            training.scale_grads(self._model, torch.tensor(self._world_size / max(num_tokens, 1)))
            max_norm = float(self._clip_grad_norm) if self._clip_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable_params, max_norm=max_norm)  # inf: measure only
            if isinstance(grad_norm, DTensor):
                grad_norm = grad_norm.full_tensor()
            self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)
        if self._lr_scheduler is not None:
            self._lr_scheduler.step()
        return grad_norm

    def _current_lr(self) -> float:
        if self._optimizer_in_bwd:
            return self._optim_wrapper.get_optim_key("lr")
        return self._optimizer.param_groups[0]["lr"]

    def _log(self, loss: float, lr: float, grad_norm: Optional[torch.Tensor], tokens_per_second: float) -> None:
        memory = gather_objects(_peak_memory(self._device)) if self._log_peak_memory_stats else []
        if not self._is_rank_zero:
            return
        metrics = {"loss": loss, "lr": lr, "tokens_per_second": tokens_per_second}
        if self._optimizer is not None and len(self._optimizer.param_groups) > 1:  # per-part rates
            metrics.update({f"lr_{group['name']}": group["lr"] for group in self._optimizer.param_groups})
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        for key in memory[0] if memory else []:  # the largest rank under the usual key, then every rank
            metrics[key] = max(rank_memory[key] for rank_memory in memory)
            metrics.update({f"{key}_rank{rank}": rank_memory[key] for rank, rank_memory in enumerate(memory)})
        self._metric_logger.log_dict(metrics, step=self.global_step)

    def cleanup(self) -> None:
        """Close the metric logger and leave the process group."""
        if self._metric_logger is not None:
            self._metric_logger.close()
        dist.destroy_process_group()


def _scheduler_state(scheduler) -> Optional[Dict[str, Any]]:
    """The scheduler's state without callables (torchtune's in-backward wrapper patches a local ``step`` in)."""
    if scheduler is None:
        return None
    return {key: value for key, value in scheduler.state_dict().items() if not callable(value)}


def _peak_memory(device: torch.device) -> Dict[str, float]:
    if device.type == "cuda":
        stats = training.get_memory_stats(device=device)
        return {"peak_memory_alloc_gib": stats["peak_memory_alloc"], "peak_memory_reserved_gib": stats["peak_memory_reserved"]}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point for ``torchrun`` / ``tune run --nproc_per_node N``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")
    recipe = FullFinetuneRecipeDistributed(cfg=cfg)
    if recipe._is_rank_zero:
        config.log_config(recipe_name="FullFinetuneRecipeDistributed", cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
