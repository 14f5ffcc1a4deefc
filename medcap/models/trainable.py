"""Which parameters train: the image side by configuration; the decoder frozen, save optional LoRA adapters."""

from typing import List, Optional, Tuple

from torch import nn

from medcap.models.fusion import MedcapModel
from medcap.models.lora import adapter_names

DECODER_LORA_GROUP = "decoder_lora"  # the optimizer group (and optimizer_groups key) of the adapters
LORA_MODES = ("decoder_lora", "projector_and_decoder_lora", "encoder_projector_and_decoder_lora")
TRAINABLE_MODES = ("projector", "encoder_and_projector", "last_k_blocks") + LORA_MODES


def set_trainable(model: MedcapModel, mode: str = "encoder_and_projector", last_k_blocks: Optional[int] = None) -> List[str]:
    """Freeze the decoder (all but its LoRA adapters, when trained) and select the trainable parameters.

    Args:
        model (MedcapModel): the model.
        mode (str): ``"projector"``; ``"encoder_and_projector"`` (medcap's default: whole tower +
            projector); ``"last_k_blocks"`` (the tower's last ``last_k_blocks`` blocks, every tower
            parameter after them such as the final norm and pooling head, and the projector);
            with decoder LoRA adapters (``decoder_lora`` in the model): ``decoder_lora`` (the
            adapters alone; the image side frozen), ``projector_and_decoder_lora``,
            ``encoder_projector_and_decoder_lora``. The decoder's base weights never train.
        last_k_blocks (Optional[int]): K for ``"last_k_blocks"``.

    Returns:
        List[str]: names of the trainable parameters, in model order.
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"trainable must be one of {TRAINABLE_MODES}, got {mode!r}")
    model.requires_grad_(False)
    encoder = model.image_encoder
    if mode in LORA_MODES:
        lora_names = adapter_names(model.decoder)
        if not lora_names:
            raise ValueError(f"trainable={mode!r} needs decoder LoRA adapters: set model.decoder_lora (medcap.models.decoder_lora)")
        params = dict(model.decoder.named_parameters())
        for name in lora_names:
            params[name].requires_grad_(True)
    if mode != "decoder_lora":
        encoder.projector.requires_grad_(True)
    if mode in ("encoder_and_projector", "encoder_projector_and_decoder_lora"):
        encoder.vision_tower.requires_grad_(True)
    elif mode == "last_k_blocks":
        blocks = encoder.vision_tower.blocks()
        if not last_k_blocks or not 0 < last_k_blocks <= len(blocks):
            raise ValueError(f"trainable_last_k_blocks must be in 1..{len(blocks)}, got {last_k_blocks!r}")
        first_trainable = next(blocks[len(blocks) - last_k_blocks].parameters())
        trainable = False
        for param in encoder.vision_tower.parameters():  # registration order = forward order
            trainable = trainable or param is first_trainable
            param.requires_grad_(trainable)
    return [name for name, param in model.named_parameters() if param.requires_grad]


def split_decoder_lora(trainable_names: List[str]) -> Tuple[List[str], List[str]]:
    """Split trainable names into (image side, decoder adapters), each in model order."""
    lora = [name for name in trainable_names if name.startswith("decoder.")]
    return [name for name in trainable_names if not name.startswith("decoder.")], lora


def set_train_mode(model: nn.Module) -> None:
    """``model.train()`` for what trains, ``eval()`` for every frozen module.

    A module all of whose parameters are frozen is put in eval mode with everything inside it, so
    frozen BatchNorm layers keep their running statistics (bit-identical) and frozen dropout stays
    off; modules without parameters (activations, dropout) inside a trainable module train with it.
    Call it instead of ``model.train()`` after :func:`set_trainable`.

    Args:
        model (nn.Module): the model, its trainable parameters already selected.
    """

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(param.requires_grad for param in params):
            module.eval()
            return
        module.training = True
        for child in module.children():
            visit(child)

    visit(model)
