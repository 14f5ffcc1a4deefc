"""Model builders: a decoder, a vision tower and a projector composed into a :class:`MedcapModel`.

Component builders (towers, projectors) live beside their modules; the builders here only wire
built components together, so a YAML config can describe any architecture as data.
"""

from typing import Optional

import torch
from torch import nn
from torchtune.models.llama3 import llama3_8b
from torchtune.models.llama3_1 import llama3_1_8b
from torchtune.modules import TransformerDecoder

from medcap.models.fusion import ImageEncoder, MedcapModel
from medcap.models.lora import LORA_ATTR, DecoderLoRA
from medcap.models.quantize import check_quantization, mark_for_quantized_loading
from medcap.models.projectors import MedcapProjector, MLPProjector
from medcap.models.vision import VisionTower, open_clip_vision_tower

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
LLAMA3_IMAGE_TOKEN_ID = 128256  # Llama-3's <|image|>, one past the 128,256-entry embedding table


def prepare_decoder(
    decoder: TransformerDecoder, decoder_quantization: Optional[str] = None, decoder_lora: Optional[DecoderLoRA] = None
) -> TransformerDecoder:
    """Mark a built decoder for quantized loading and/or LoRA adapters (both act in the decoder loader).

    Args:
        decoder (TransformerDecoder): the frozen language model, just built.
        decoder_quantization (Optional[str]): None, ``nf4`` or ``int8`` (:mod:`medcap.models.quantize`).
            A quantized decoder moves to the meta device until :func:`medcap.checkpoint.decoder.load_frozen_decoder`.
        decoder_lora (Optional[DecoderLoRA]): adapters (:func:`medcap.models.lora.decoder_lora`).

    Returns:
        TransformerDecoder: the same decoder.
    """
    if check_quantization(decoder_quantization) is not None:
        decoder = mark_for_quantized_loading(decoder, decoder_quantization)
    if decoder_lora is not None:
        if not isinstance(decoder_lora, DecoderLoRA):
            raise ValueError(f"decoder_lora must be built by medcap.models.decoder_lora (a _component_ node), got {decoder_lora!r}")
        setattr(decoder, LORA_ATTR, decoder_lora)
    return decoder


def medcap_model(
    decoder: TransformerDecoder,
    vision_tower: VisionTower,
    projector: nn.Module,
    image_token_id: int,
    decoder_quantization: Optional[str] = None,
    decoder_lora: Optional[DecoderLoRA] = None,
) -> MedcapModel:
    """Compose built components into a :class:`MedcapModel`.

    Args:
        decoder (TransformerDecoder): the (frozen) language model.
        vision_tower (VisionTower): the image tower.
        projector (nn.Module): :class:`MedcapProjector` or :class:`MLPProjector`.
        image_token_id (int): the tokenizer's image placeholder id.
        decoder_quantization (Optional[str]): hold the frozen decoder's layer linears in ``nf4``
            (torchtune ``FrozenNF4Linear``) or ``int8`` (bitsandbytes ``Linear8bitLt``); None: full precision.
        decoder_lora (Optional[DecoderLoRA]): optional LoRA adapters on the decoder.

    Returns:
        MedcapModel: the fused model.
    """
    decoder = prepare_decoder(decoder, decoder_quantization, decoder_lora)
    return MedcapModel(decoder, ImageEncoder(vision_tower, projector), image_token_id=image_token_id)


def _build_decoder(builder, decoder_quantization: Optional[str]) -> TransformerDecoder:
    """Build a decoder; on the meta device when it loads quantized (no full-precision random init on the GPU)."""
    if decoder_quantization is None:
        return builder()
    device = torch.get_default_device()  # the recipe's `with device:`, remembered for loading
    with torch.device("meta"):
        decoder = builder()
    decoder.medcap_build_device = device
    return decoder


def _biomedclip_model(
    decoder: TransformerDecoder, vision_model: str, output: str, projector: str, num_image_tokens: int,
    decoder_quantization: Optional[str] = None, decoder_lora: Optional[DecoderLoRA] = None,
) -> MedcapModel:
    tower = open_clip_vision_tower(vision_model, output=output)
    dim = decoder.tok_embeddings.embedding_dim
    if projector == "medcap":
        proj = MedcapProjector(tower.out_dim, dim, num_tokens=num_image_tokens)
    elif projector == "mlp":
        proj = MLPProjector(tower.out_dim, dim)
    else:
        raise ValueError(f"projector must be 'medcap' or 'mlp', got {projector!r}")
    return medcap_model(decoder, tower, proj, image_token_id=LLAMA3_IMAGE_TOKEN_ID,
                        decoder_quantization=decoder_quantization, decoder_lora=decoder_lora)


def llama3_8b_biomedclip(
    vision_model: str = BIOMEDCLIP, output: str = "pooled", projector: str = "medcap", num_image_tokens: int = 32,
    decoder_quantization: Optional[str] = None, decoder_lora: Optional[DecoderLoRA] = None,
) -> MedcapModel:
    """Llama-3 8B + BiomedCLIP's vision tower, medcap's original model.

    Args:
        vision_model (str): open_clip name of the tower (``local-dir:`` offline).
        output (str): ``"pooled"`` (medcap) or ``"patch"`` (LLaVA-style, use ``projector="mlp"``).
        projector (str): ``"medcap"`` (pooled -> ``num_image_tokens``) or ``"mlp"`` (per patch).
        num_image_tokens (int): image tokens of the ``medcap`` projector.
        decoder_quantization (Optional[str]): None, ``nf4`` or ``int8`` (see :func:`medcap_model`).
        decoder_lora (Optional[DecoderLoRA]): optional decoder adapters.

    Returns:
        MedcapModel: decoder weights uninitialised; load them with a torchtune checkpointer.
    """
    return _biomedclip_model(_build_decoder(llama3_8b, decoder_quantization), vision_model, output, projector, num_image_tokens, decoder_quantization, decoder_lora)


def llama3_1_8b_biomedclip(
    vision_model: str = BIOMEDCLIP, output: str = "pooled", projector: str = "medcap", num_image_tokens: int = 32,
    decoder_quantization: Optional[str] = None, decoder_lora: Optional[DecoderLoRA] = None,
) -> MedcapModel:
    """Llama-3.1 8B + BiomedCLIP's vision tower (see :func:`llama3_8b_biomedclip`)."""
    return _biomedclip_model(_build_decoder(llama3_1_8b, decoder_quantization), vision_model, output, projector, num_image_tokens, decoder_quantization, decoder_lora)


def text_only_model(decoder: TransformerDecoder, decoder_quantization: Optional[str] = None) -> MedcapModel:
    """A decoder without an image side, for text-only uses such as an LLM judge.

    Args:
        decoder (TransformerDecoder): the language model.
        decoder_quantization (Optional[str]): None, ``nf4`` or ``int8``: loaded quantized by
            :func:`medcap.checkpoint.decoder.load_frozen_decoder` (a 70B judge in 4 bits).

    Returns:
        MedcapModel: a model whose ``embed`` takes no images.
    """
    return MedcapModel(prepare_decoder(decoder, decoder_quantization), None, image_token_id=-1)
