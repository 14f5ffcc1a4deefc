"""torch.distributed + FSDP2 pieces of ``recipes/full_finetune_distributed.py`` (torchtune 0.6.1's way).

* :func:`init_process_group`: the process group torchrun describes (gloo on CPU, nccl on GPU), or a
  clear error for a launch without torchrun.
* :func:`shard_medcap_model`: FSDP2 ``fully_shard`` per decoder layer, the LM head, the vision tower
  and the projector, then the root (``torchtune.training.shard_model``). Gradients of the trainable
  units are reduce-scattered across ranks by FSDP2 itself.
* :func:`load_sharded_decoder`: the frozen decoder's full checkpoint into the meta-built sharded
  model (``torchtune.training.load_from_full_model_state_dict``), strict.
* :func:`full_optimizer_state` / :func:`load_full_optimizer_state`: the optimizer state in full, in
  torch's own index format, i.e. exactly what the single-device recipe saves, so a checkpoint resumes
  with any number of processes and in either recipe. Gathering uses torchtune's
  ``get_full_optimizer_state_dict``; loading is ours: torchtune's
  ``load_from_full_optimizer_state_dict`` raises a KeyError for a parameter that never received a
  gradient (no state), the failure of hiyouga/EasyR1 #275.
* :func:`save_image_encoder_state`: the gathered image encoder written as the single-device
  recipe writes it.
* :func:`raise_on_any_rank`: one rank's failure (a bad record) stops every rank with its message.
"""

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor
from torchtune import training

from medcap.checkpoint.io import IMAGE_ENCODER_FILE, check_state_dict_fits
from medcap.utils.atomic import atomic_write

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# FSDP units besides the decoder layers (modules with parameters only; a tied LM head is no module)
UNIT_NAMES = ("decoder.output", "image_encoder.vision_tower", "image_encoder.projector")


def init_process_group(device_name: str, recipe: str) -> Tuple[torch.device, int, int]:
    """Join the process group that torchrun set up: gloo for ``device=cpu``, nccl for ``device=cuda``.

    Args:
        device_name (str): the config's ``device`` (``cpu`` or ``cuda``; ``cuda`` means this process's
            ``cuda:LOCAL_RANK``).
        recipe (str): the recipe file, for the launch command in the error.

    Returns:
        Tuple[torch.device, int, int]: this process's device, the world size and the rank.

    Raises:
        RuntimeError: without torchrun's environment, or ``device=cuda`` without a GPU.
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"{recipe} runs one process per device under torchrun, which sets {', '.join(missing)}; launch it as\n"
            f"  torchrun --nproc_per_node N {recipe} --config CONFIG [key=value ...]\n"
            f"or\n  tune run --nproc_per_node N {recipe} --config CONFIG [key=value ...]\n"
            "(multi-node: add --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT). For one device without "
            "torchrun use recipes/full_finetune_single_device.py with the same config."
        )
    if device_name not in ("cpu", "cuda"):
        raise ValueError(f"device={device_name!r}: the distributed recipe runs on cpu (gloo) or cuda (nccl)")
    if device_name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but this machine has no CUDA device; use device=cpu (gloo)")
        device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=training.get_distributed_backend(device.type))
    return device, dist.get_world_size(), dist.get_rank()


def broadcast_module_state(module: nn.Module, source: Optional[nn.Module], device: torch.device) -> None:
    """Materialise a meta-built ``module`` on ``device`` with rank 0's ``source`` values.

    Every parameter and buffer (persistent or not) is broadcast from rank 0, where ``source`` is a
    real copy of the same architecture; on other ranks ``source`` is None.

    Args:
        module (nn.Module): built on the meta device (same structure on every rank).
        source (Optional[nn.Module]): rank 0's real module.
        device (torch.device): where the values go (and the broadcast runs: nccl needs GPU tensors).
    """
    module.to_empty(device=device)
    targets = [*module.named_parameters(), *module.named_buffers()]
    sources = dict([*source.named_parameters(), *source.named_buffers()]) if source is not None else {}
    with torch.no_grad():
        for name, target in targets:
            if source is not None:
                target.copy_(sources[name])
            dist.broadcast(target, src=0)


def shard_medcap_model(model: nn.Module, reshard_after_forward: bool = True) -> None:
    """Shard a :class:`~medcap.models.MedcapModel` with FSDP2: each decoder layer, the LM head, the
    vision tower, the projector, then the root.

    The root (token embeddings, final norm; a tied LM head's weight) is not resharded after forward:
    the loss applies the LM head to the hidden states after ``model(...)`` returns.

    Args:
        model (nn.Module): the model, trainable parameters already selected.
        reshard_after_forward (bool): free each layer's gathered weights after its forward (FULL_SHARD).
    """

    def is_decoder_layer(name: str, module: nn.Module) -> bool:
        parts = name.split(".")
        return len(parts) == 3 and parts[:2] == ["decoder", "layers"] and parts[2].isdigit()

    def is_unit(name: str, module: nn.Module) -> bool:
        return name in UNIT_NAMES and any(True for _ in module.parameters())

    training.shard_model(model, [is_decoder_layer, is_unit], cpu_offload=False, reshard_after_forward=reshard_after_forward)
    model.set_reshard_after_forward(False, recurse=False)


def load_sharded_decoder(model: nn.Module, decoder_state: Mapping[str, torch.Tensor], device: torch.device, source: str) -> None:
    """Load the frozen decoder's full weights into the sharded model (every key must match).

    Args:
        model (nn.Module): the sharded model, decoder still on the meta device.
        decoder_state (Mapping[str, torch.Tensor]): torchtune-format decoder weights (a checkpointer's).
        device (torch.device): this rank's device.
        source (str): where the weights came from, for errors.
    """
    full = {f"decoder.{key}": value for key, value in decoder_state.items()}
    expected = {key: value for key, value in model.state_dict().items() if key.startswith("decoder.")}
    check_state_dict_fits(full, expected, Path(source), what="the configured decoder")
    training.load_from_full_model_state_dict(model, full, device, strict=False)
    with device:  # non-persistent buffers (RoPE caches) are not in a state dict: build them on the device
        for module in model.modules():
            if hasattr(module, "rope_init"):
                module.rope_init()
    training.validate_no_params_on_meta_device(model)


def gather_image_encoder_state(model: nn.Module, is_rank_zero: bool) -> Dict[str, torch.Tensor]:
    """The image encoder's full state dict on rank 0's CPU (empty elsewhere); every rank must call it."""
    return training.gather_cpu_state_dict(model.image_encoder, is_rank_zero=is_rank_zero)


def save_image_encoder_state(state_dict: Mapping[str, torch.Tensor], directory: Path, metadata: Dict[str, str]) -> Path:
    """Write a full image-encoder state as ``directory/image_encoder.safetensors``, atomically, as
    :func:`medcap.checkpoint.save_image_encoder` writes a module's (metadata in sorted key order)."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    path = Path(directory) / IMAGE_ENCODER_FILE
    ordered = {key: metadata[key] for key in sorted(metadata)}
    atomic_write(path, lambda temp: save_file(tensors, temp, metadata=ordered))
    return path


def _flat_names(groups: Sequence[Mapping[str, Any]]) -> List[Any]:
    return [name for group in groups for name in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, is_rank_zero: bool) -> Dict[str, Any]:
    """The optimizer's full (unsharded) state in torch's index format, on rank 0's CPU (empty elsewhere).

    ``torchtune.training.get_full_optimizer_state_dict`` gathers it keyed by parameter name; the keys
    become the positions of the parameters in the parameter groups, which is what
    ``optimizer.state_dict()`` gives on one device. A parameter without state (never got a gradient)
    stays without. Every rank must call it.

    Args:
        model (nn.Module): the sharded model.
        optimizer (torch.optim.Optimizer): an optimizer over its (sharded) trainable parameters.
        is_rank_zero (bool): whether this is rank 0.

    Returns:
        Dict[str, Any]: ``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``.
    """
    by_name = training.get_full_optimizer_state_dict(model, optimizer, is_rank_zero=is_rank_zero)
    if not is_rank_zero:
        return {}
    index = {name: position for position, name in enumerate(_flat_names(by_name["param_groups"]))}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in by_name["param_groups"]]
    return {"state": {index[name]: state for name, state in by_name["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, full_state: Mapping[str, Any]) -> None:
    """Load a full optimizer state (index format, from either recipe) into an optimizer over sharded parameters.

    Each rank keeps its shard of every state tensor shaped like its parameter; scalars (``step``) are
    kept whole. Parameters without saved state stay without (they never received a gradient), as on
    one device.

    Args:
        optimizer (torch.optim.Optimizer): an optimizer over DTensor (or plain) parameters.
        full_state (Mapping[str, Any]): ``optimizer.state_dict()`` of an unsharded run, or
            :func:`full_optimizer_state`.

    Raises:
        ValueError: when the saved groups do not match this optimizer's (other ``trainable``).
    """
    params = [param for group in optimizer.param_groups for param in group["params"]]
    saved = _flat_names(full_state["param_groups"])
    if len(saved) != len(params) or len(full_state["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"the saved optimizer state has {len(full_state['param_groups'])} groups over {len(saved)} parameters, this "
            f"run's optimizer {len(optimizer.param_groups)} over {len(params)}: was `trainable` or `optimizer_groups` changed?"
        )
    position = {name: index for index, name in enumerate(saved)}
    state = {}
    for name, entry in full_state["state"].items():
        param = params[position[name]]
        state[name] = {key: _shard_like(value, param) for key, value in entry.items()}
    optimizer.load_state_dict({"state": state, "param_groups": full_state["param_groups"]})


def _shard_like(value: Any, param: torch.Tensor) -> Any:
    if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape:
        local = value.to(param.device_mesh.device_type)
        return distribute_tensor(local, param.device_mesh, param.placements, src_data_rank=None)  # every rank has it
    return value


def raise_on_any_rank(error: Optional[BaseException], what: str, device: torch.device) -> None:
    """Stop every rank when one failed: each rank calls this at the same point with its own error or None.

    Args:
        error (Optional[BaseException]): this rank's failure, if any.
        what (str): what was being done (``reading batch 3 of epoch 1``).
        device (torch.device): this rank's device (for the collective).

    Raises:
        RuntimeError: on every rank when any rank failed, naming each failed rank and its message.
    """
    failed = torch.tensor([0 if error is None else 1], device=device)
    dist.all_reduce(failed)
    if int(failed.item()) == 0:
        return
    messages: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
    report = "; ".join(f"rank {rank}: {message}" for rank, message in enumerate(messages) if message is not None)
    raise RuntimeError(f"stopped every rank: {what} failed on {report}") from error


def all_reduce_sum(values: Sequence[float], device: torch.device) -> List[float]:
    """Sum numbers over ranks (float64)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(value: Any) -> List[Any]:
    """Every rank's ``value`` (numbers, strings, tensors), in rank order, on every rank."""
    found: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, value)
    return found

