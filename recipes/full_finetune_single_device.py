"""Train a vision tower + projector in front of a frozen decoder on one device.

Launch (from the repository root)::

    PYTHONPATH=. tune run recipes/full_finetune_single_device.py --config recipes/configs/medcap/tiny_cpu.yaml
    python recipes/full_finetune_single_device.py --config recipes/configs/medcap/tiny_cpu.yaml epochs=1

The decoder is loaded with a torchtune checkpointer and stays frozen (in full precision, or
quantized while it loads with ``model.decoder_quantization=nf4|int8``). After every epoch the image
encoder (tower + projector) is saved as ``output_dir/epoch_{n}/image_encoder.safetensors`` with
the recipe state beside it (and, with ``model.decoder_lora`` and a ``*decoder_lora`` trainable set,
the decoder adapters as ``adapter_model.safetensors`` + ``adapter_config.json``, PEFT layout);
``resume_from_checkpoint=True`` continues from the last epoch exactly.
"""

import logging
import math
import os
import random
import resource
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

if __package__ in (None, ""):  # `python recipes/x.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torchtune import config, modules, training, utils
from torchtune.config._utils import _get_component_from_path
from tqdm import tqdm

from medcap import config as medcap_config
from medcap.checkpoint import (
    atomic_write, load_decoder_adapters, load_image_encoder_weights, load_recipe_state, save_decoder_adapters, save_image_encoder,
    save_recipe_state,
)
from medcap.checkpoint.decoder import load_frozen_decoder
from medcap.data import build_sampler, check_transform_fits_model
from medcap.models import set_train_mode, set_trainable
from medcap.models.quantize import decoder_weight_bytes, quantization_of
from medcap.models.trainable import DECODER_LORA_GROUP, split_decoder_lora
from medcap.training import optimizer_param_groups

log = logging.getLogger("medcap")

# every top-level key this recipe reads (others are refused: a typo must not be silently ignored)
CONFIG_KEYS = (
    "output_dir", "model", "model_transform", "checkpointer", "dataset", "loss", "collate_fn", "seed", "shuffle",
    "group_by_length", "batch_size", "epochs", "max_steps_per_epoch", "gradient_accumulation_steps", "num_workers",
    "trainable", "trainable_last_k_blocks", "vision_checkpoint", "resume_from_checkpoint", "optimizer", "optimizer_groups",
    "optimizer_in_bwd", "lr_scheduler", "clip_grad_norm", "device", "dtype", "enable_activation_checkpointing",
    "metric_logger", "log_every_n_steps", "log_peak_memory_stats",
)


class FullFinetuneRecipeSingleDevice:
    """Trains the image side of a :class:`~medcap.models.MedcapModel`; the decoder stays frozen.

    Components (``_component_`` nodes): ``model``, ``model_transform`` (tokenizer + image transform
    + ``max_seq_len``; the model gives the number of image tokens), ``checkpointer`` (where the
    frozen decoder's weights are), ``dataset``, ``loss``, ``collate_fn`` (a dotted path),
    ``optimizer`` (AdamW or bitsandbytes AdamW8bit; ``optimizer_groups`` overrides its arguments for
    the ``vision_tower`` or the ``projector``, e.g. a lower tower rate), ``lr_scheduler``, ``metric_logger``.
    Knobs (all overridable as ``key=value``): ``device`` (cpu/cuda), ``dtype`` (fp32/bf16), ``seed``,
    ``epochs``, ``max_steps_per_epoch``, ``batch_size``, ``shuffle``, ``group_by_length`` (both
    honoured together), ``gradient_accumulation_steps``, ``num_workers``, ``optimizer_in_bwd``,
    ``clip_grad_norm`` (null: no clipping; the gradient norm is logged either way),
    ``enable_activation_checkpointing``, ``trainable`` (projector / encoder_and_projector /
    last_k_blocks with ``trainable_last_k_blocks``; with ``model.decoder_lora``: decoder_lora /
    projector_and_decoder_lora / encoder_projector_and_decoder_lora), ``vision_checkpoint``, ``resume_from_checkpoint``,
    ``log_every_n_steps``, ``log_peak_memory_stats``, ``output_dir``. Unknown keys are refused.
    The progress bar shows on a terminal; ``MEDCAP_PROGRESS=1`` shows it in a log file too.
    """

    def __init__(self, cfg: DictConfig) -> None:
        medcap_config.check_config_keys(cfg, CONFIG_KEYS, "full_finetune_single_device")
        self._device = utils.get_device(cfg.device)
        self._dtype = training.get_dtype(cfg.dtype, device=self._device)
        self._output_dir = Path(cfg.output_dir)
        self._seed = training.set_seed(seed=cfg.seed)
        self.epochs = cfg.epochs
        self.max_steps_per_epoch = cfg.get("max_steps_per_epoch", None)
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
        self.epochs_run = 0
        self.global_step = 0

    def setup(self, cfg: DictConfig) -> None:
        """Build model, data, optimizer, scheduler and logger; restore state when resuming."""
        self._metric_logger = medcap_config.instantiate(cfg.metric_logger)
        self._metric_logger.log_config(cfg)
        state = self._latest_state() if self._resume_from_checkpoint else None

        self._decoder_source = str(cfg.checkpointer.get("checkpoint_dir", ""))
        self._model = self._setup_model(cfg, state_dir=state["_dir"] if state else None)
        transform = medcap_config.instantiate(cfg.model_transform, num_image_tokens=self._model.num_image_tokens)
        check_transform_fits_model(transform, self._model)
        self._tokenizer = transform.tokenizer
        self._dataset = medcap_config.instantiate(cfg.dataset, model_transform=transform)
        self._sampler = build_sampler(
            self._dataset, cfg.batch_size, shuffle=cfg.get("shuffle", True),
            group_by_length=cfg.get("group_by_length", False), seed=cfg.seed,
        )
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
        atomic_write(self._output_dir / "config.yaml", lambda temp: OmegaConf.save(cfg, temp, resolve=True))
        log.info(
            "Trainable parameters: %s (%s tensors); dataset %s: %d samples, %d skipped",
            f"{sum(p.numel() for p in self._trainable_params):,}", len(self._trainable_params),
            self._dataset.source, len(self._dataset), len(self._dataset.skipped),
        )

    def _setup_model(self, cfg: DictConfig, state_dir: Optional[Path]) -> torch.nn.Module:
        with training.set_default_dtype(self._dtype), self._device:
            model = medcap_config.instantiate(cfg.model)
        load_frozen_decoder(cfg.checkpointer, model.decoder)  # quantized / adapted as the model node asks
        quantization = quantization_of(model.decoder)
        log.info("Frozen decoder (%s): %s", quantization.method if quantization else "full precision",
                 {kind: f"{nbytes / 2**20:.1f} MiB" for kind, nbytes in decoder_weight_bytes(model.decoder).items()})
        vision_checkpoint = state_dir or cfg.get("vision_checkpoint", None)
        if vision_checkpoint:
            load_image_encoder_weights(Path(vision_checkpoint), model.image_encoder)
            log.info("Image encoder initialised from %s", vision_checkpoint)
            if state_dir or (Path(vision_checkpoint).is_dir() and (Path(vision_checkpoint) / "adapter_model.safetensors").is_file()):
                if load_decoder_adapters(Path(vision_checkpoint), model.decoder):
                    log.info("Decoder adapters initialised from %s", vision_checkpoint)
        self._trainable_mode = cfg.get("trainable", "encoder_and_projector")
        self._trainable_names = set_trainable(model, self._trainable_mode, cfg.get("trainable_last_k_blocks", None))
        if cfg.get("enable_activation_checkpointing", False):
            training.set_activation_checkpointing(model.decoder, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
        model.to(device=self._device, dtype=self._dtype)
        set_train_mode(model)  # frozen modules (the decoder, frozen tower blocks and their BatchNorms) stay in eval
        named = dict(model.named_parameters())
        self._trainable_params = [named[name] for name in self._trainable_names]
        return model

    def _setup_optimizer(self, cfg_optimizer: DictConfig, cfg_groups: Optional[DictConfig]) -> None:
        named = dict(self._model.named_parameters())
        groups = OmegaConf.to_container(cfg_groups, resolve=True) if cfg_groups else {}
        image_names, lora_names = split_decoder_lora(self._trainable_names)
        lora_overrides = groups.pop(DECODER_LORA_GROUP, {})
        param_groups = optimizer_param_groups(named, image_names, groups)
        if lora_names:  # the decoder adapters: one more group (optimizer_groups.decoder_lora overrides it)
            param_groups.append({"params": [named[n] for n in lora_names], "name": DECODER_LORA_GROUP, **lora_overrides})
        elif lora_overrides:
            raise ValueError(f"optimizer_groups.{DECODER_LORA_GROUP} given but trainable={self._trainable_mode!r} trains no decoder adapter")
        if self._optimizer_in_bwd:
            if groups and self._cfg_has_scheduler:
                raise ValueError(
                    "optimizer_groups with optimizer_in_bwd=True and an lr_scheduler: torchtune's in-backward "
                    "wrapper gives every parameter the first group's rate; drop one of the three"
                )
            overrides = {id(p): {k: v for k, v in g.items() if k not in ("params", "name")} for g in param_groups for p in g["params"]}
            optim_dict = {p: medcap_config.instantiate(cfg_optimizer, [p], **overrides[id(p)]) for p in self._trainable_params}
            training.register_optim_in_bwd_hooks(model=self._model, optim_dict=optim_dict)
            self._optim_wrapper = training.OptimizerInBackwardWrapper({n: optim_dict[named[n]] for n in self._trainable_names})
            self._optimizer = None
        else:
            self._optimizer = medcap_config.instantiate(cfg_optimizer, param_groups)

    def _setup_lr_scheduler(self, cfg_lr_scheduler: Optional[DictConfig], num_training_steps: int):
        if cfg_lr_scheduler is None or cfg_lr_scheduler.get("_component_") is None:  # null, or `lr_scheduler=null` on the CLI
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
        return state

    def _restore(self, state: Dict[str, Any]) -> None:
        if state["seed"] != self._seed or state["total_epochs"] != self.epochs or state["max_steps_per_epoch"] != self.max_steps_per_epoch:
            log.warning("Resuming with changed seed/epochs/max_steps_per_epoch: the run will not match an uninterrupted one")
        self.epochs_run, self.global_step = state["epochs_run"], state["global_step"]
        if self._optimizer_in_bwd:
            self._optim_wrapper.load_state_dict(state["optimizer"])
        else:
            self._optimizer.load_state_dict(state["optimizer"])
        if self._lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self._lr_scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        random.setstate(state["rng_python"])
        log.info("Resumed from %s: %d epochs done, step %d", state["_dir"], self.epochs_run, self.global_step)

    def save_checkpoint(self, epoch: int) -> None:
        """Save the image encoder and the recipe state of a finished epoch (atomic writes)."""
        epoch_dir = self._output_dir / f"epoch_{epoch}"
        save_image_encoder(self._model.image_encoder, epoch_dir, metadata={"epoch": str(epoch), "format": "medcap"})
        save_decoder_adapters(self._model.decoder, epoch_dir, base_model=self._decoder_source)  # no-op without decoder_lora
        optimizer_state = self._optim_wrapper.state_dict() if self._optimizer_in_bwd else self._optimizer.state_dict()
        save_recipe_state(
            {
                "epochs_run": epoch + 1,
                "global_step": self.global_step,
                "seed": self._seed,
                "total_epochs": self.epochs,
                "max_steps_per_epoch": self.max_steps_per_epoch,
                "optimizer": optimizer_state,
                "lr_scheduler": self._lr_scheduler.state_dict() if self._lr_scheduler is not None else None,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "rng_python": random.getstate(),
            },
            epoch_dir,
        )
        log.info("Saved %s", epoch_dir)

    def train(self) -> None:
        """Run the epochs; log loss, lr, tokens/s and peak memory; save after every epoch."""
        accumulation = self._gradient_accumulation_steps
        for epoch in range(self.epochs_run, self.epochs):
            self._sampler.set_epoch(epoch)
            progress = tqdm(total=self._steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not sys.stderr.isatty() and os.environ.get("MEDCAP_PROGRESS") != "1")
            loss_sum, num_tokens, seen_tokens, t0 = 0.0, 0, 0, time.perf_counter()
            step_in_epoch = 0
            for index, batch in enumerate(self._dataloader):
                if step_in_epoch >= self._steps_per_epoch:
                    break
                tokens = batch["tokens"].to(self._device)  # [b, s]
                labels = batch["labels"].to(self._device)  # [b, s]
                images = batch["images"].to(self._device, self._dtype) if batch["images"] is not None else None
                hidden = self._model(tokens, images=images)  # [b, s, d]
                batch_loss, batch_tokens = self._loss_fn(hidden, labels, self._model.lm_head)
                seen_tokens += int((tokens != self._tokenizer.pad_id).sum())
                if self._optimizer_in_bwd:
                    (batch_loss / max(batch_tokens, 1)).backward()
                else:
                    batch_loss.backward()  # gradients are divided by the tokens of the whole step below
                loss_sum += batch_loss.item()
                num_tokens += batch_tokens
                if (index + 1) % accumulation != 0 and index + 1 != len(self._dataloader):
                    continue
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

    def _optimizer_step(self, num_tokens: int) -> Optional[torch.Tensor]:
        grad_norm = None
        if not self._optimizer_in_bwd:
            for param in self._trainable_params:  # mean over every labelled token of the step
                if param.grad is not None:
                    param.grad.div_(max(num_tokens, 1))
            max_norm = float(self._clip_grad_norm) if self._clip_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable_params, max_norm=max_norm)  # inf: measure only
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
        metrics = {"loss": loss, "lr": lr, "tokens_per_second": tokens_per_second}
        if self._optimizer is not None and len(self._optimizer.param_groups) > 1:  # per-part rates
            metrics.update({f"lr_{group['name']}": group["lr"] for group in self._optimizer.param_groups})
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if self._log_peak_memory_stats:
            metrics.update(_peak_memory(self._device))
        self._metric_logger.log_dict(metrics, step=self.global_step)

    def cleanup(self) -> None:
        """Close the metric logger."""
        self._metric_logger.close()


def _peak_memory(device: torch.device) -> Dict[str, float]:
    if device.type == "cuda":
        stats = training.get_memory_stats(device=device)
        return {"peak_memory_alloc_gib": stats["peak_memory_alloc"], "peak_memory_reserved_gib": stats["peak_memory_reserved"]}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    """Entry point for ``tune run`` and ``python recipes/full_finetune_single_device.py``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s: %(message)s")
    config.log_config(recipe_name="FullFinetuneRecipeSingleDevice", cfg=cfg)
    recipe = FullFinetuneRecipeSingleDevice(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
