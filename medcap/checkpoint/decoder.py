"""Load the frozen decoder's weights with a torchtune checkpointer (our thin interface to it).

torchtune's checkpointers are built for saving too: they require an ``output_dir`` and create it.
medcap never re-saves the frozen decoder, so a config's ``checkpointer`` node names only where the
weights are; the checkpointer gets a throwaway output folder that is removed after loading.

Every recipe loads the decoder through :func:`load_frozen_decoder`, so what the model builder asked
for applies everywhere: a decoder marked for quantization (``decoder_quantization: nf4 | int8``, see
:mod:`medcap.models.quantize`) is quantized module by module while it loads, and a decoder with
``decoder_lora`` gets its (zero-initialised) adapters once the base weights are in.
"""

import tempfile
from typing import Any, Dict, Optional, Union

import torch
from torch import nn
from torchtune import training

from medcap import config as medcap_config
from medcap.models.lora import apply_decoder_lora, lora_of
from medcap.models.quantize import DecoderQuantization, load_quantized_decoder, quantization_of


def load_decoder_state(checkpointer_cfg: Any) -> Dict[str, Any]:
    """The decoder state dict that the configured torchtune checkpointer reads.

    Args:
        checkpointer_cfg: a ``_component_`` node (``FullModelHFCheckpointer``,
            ``FullModelMetaCheckpointer`` ...) with ``checkpoint_dir``, ``checkpoint_files``, ``model_type``.

    Returns:
        Dict[str, Any]: torchtune-format decoder weights.
    """
    if "output_dir" in checkpointer_cfg:
        return medcap_config.instantiate(checkpointer_cfg).load_checkpoint()[training.MODEL_KEY]
    with tempfile.TemporaryDirectory(prefix="medcap-checkpointer-") as unused_output_dir:
        checkpointer = medcap_config.instantiate(checkpointer_cfg, output_dir=unused_output_dir)
        return checkpointer.load_checkpoint()[training.MODEL_KEY]


def load_decoder_weights(
    decoder: nn.Module, state_dict: Dict[str, torch.Tensor], device: Optional[Union[str, torch.device]] = None, source: str = "checkpoint"
) -> None:
    """Load ``state_dict`` into ``decoder`` as its builder asked (quantized or not, adapters or not).

    A quantized decoder (built on the meta device) consumes ``state_dict``: entries are popped as
    they load, so the full-precision weights are never held twice. A plain decoder loads strictly in place.

    Args:
        decoder (nn.Module): a torchtune ``TransformerDecoder``.
        state_dict (Dict[str, torch.Tensor]): torchtune-format weights.
        device (Optional[Union[str, torch.device]]): where to load a decoder built on the meta
            device (default: the device it was built for).
        source (str): where the weights came from, for error messages.
    """
    quantization = quantization_of(decoder)
    if quantization is not None:
        if device is not None:
            quantization = DecoderQuantization(quantization.method, torch.device(device), quantization.dtype)
        load_quantized_decoder(decoder, state_dict, quantization, source=source)
    else:
        decoder.load_state_dict(state_dict)
    lora = lora_of(decoder)
    if lora is not None:
        apply_decoder_lora(decoder, lora)


def load_frozen_decoder(checkpointer_cfg: Any, decoder: nn.Module, device: Optional[Union[str, torch.device]] = None) -> None:
    """Load the configured decoder weights into ``decoder`` (strict: every key must match).

    Quantization (``decoder_quantization``) and adapters (``decoder_lora``) follow the model
    builder's marks on the decoder; see :func:`load_decoder_weights`.
    """
    source = str(getattr(checkpointer_cfg, "checkpoint_dir", "checkpoint"))
    load_decoder_weights(decoder, load_decoder_state(checkpointer_cfg), device=device, source=source)
