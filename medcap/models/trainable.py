"""Which parameters train: the decoder is always frozen; the image side by configuration."""

from typing import List, Optional

from torch import nn

from medcap.models.fusion import MedcapModel

TRAINABLE_MODES = ("projector", "encoder_and_projector", "last_k_blocks")


def set_trainable(model: MedcapModel, mode: str = "encoder_and_projector", last_k_blocks: Optional[int] = None) -> List[str]:
    """Freeze the decoder and select the trainable image-side parameters.

    Args:
        model (MedcapModel): the model.
        mode (str): ``"projector"``; ``"encoder_and_projector"`` (medcap's default: whole tower +
            projector); ``"last_k_blocks"`` (the tower's last ``last_k_blocks`` blocks, every tower
            parameter after them such as the final norm and pooling head, and the projector).
        last_k_blocks (Optional[int]): K for ``"last_k_blocks"``.

    Returns:
        List[str]: names of the trainable parameters, in model order.
    """
    if mode not in TRAINABLE_MODES:
        raise ValueError(f"trainable must be one of {TRAINABLE_MODES}, got {mode!r}")
    model.requires_grad_(False)
    encoder = model.image_encoder
    encoder.projector.requires_grad_(True)
    if mode == "encoder_and_projector":
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
