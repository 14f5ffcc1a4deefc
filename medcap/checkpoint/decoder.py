"""Load the frozen decoder's weights with a torchtune checkpointer (our thin interface to it).

torchtune's checkpointers are built for saving too: they require an ``output_dir`` and create it.
medcap never re-saves the frozen decoder, so a config's ``checkpointer`` node names only where the
weights are; the checkpointer gets a throwaway output folder that is removed after loading.
"""

import tempfile
from typing import Any, Dict

from torch import nn
from torchtune import training

from medcap import config as medcap_config


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


def load_frozen_decoder(checkpointer_cfg: Any, decoder: nn.Module) -> None:
    """Load the configured decoder weights into ``decoder`` (strict: every key must match)."""
    decoder.load_state_dict(load_decoder_state(checkpointer_cfg))
