"""Model builders: a decoder, a vision tower and a projector composed into a :class:`MedcapModel`.

Component builders (towers, projectors) live beside their modules; the builders here only wire
built components together, so a YAML config can describe any architecture as data.
"""

from torch import nn
from torchtune.models.llama3 import llama3_8b
from torchtune.models.llama3_1 import llama3_1_8b
from torchtune.modules import TransformerDecoder

from medcap.models.fusion import ImageEncoder, MedcapModel
from medcap.models.projectors import MedcapProjector, MLPProjector
from medcap.models.vision import VisionTower, open_clip_vision_tower

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
LLAMA3_IMAGE_TOKEN_ID = 128256  # Llama-3's <|image|>, one past the 128,256-entry embedding table


def medcap_model(
    decoder: TransformerDecoder, vision_tower: VisionTower, projector: nn.Module, image_token_id: int
) -> MedcapModel:
    """Compose built components into a :class:`MedcapModel`.

    Args:
        decoder (TransformerDecoder): the (frozen) language model.
        vision_tower (VisionTower): the image tower.
        projector (nn.Module): :class:`MedcapProjector` or :class:`MLPProjector`.
        image_token_id (int): the tokenizer's image placeholder id.

    Returns:
        MedcapModel: the fused model.
    """
    return MedcapModel(decoder, ImageEncoder(vision_tower, projector), image_token_id=image_token_id)


def _biomedclip_model(
    decoder: TransformerDecoder, vision_model: str, output: str, projector: str, num_image_tokens: int
) -> MedcapModel:
    tower = open_clip_vision_tower(vision_model, output=output)
    dim = decoder.tok_embeddings.embedding_dim
    if projector == "medcap":
        proj = MedcapProjector(tower.out_dim, dim, num_tokens=num_image_tokens)
    elif projector == "mlp":
        proj = MLPProjector(tower.out_dim, dim)
    else:
        raise ValueError(f"projector must be 'medcap' or 'mlp', got {projector!r}")
    return medcap_model(decoder, tower, proj, image_token_id=LLAMA3_IMAGE_TOKEN_ID)


def llama3_8b_biomedclip(
    vision_model: str = BIOMEDCLIP, output: str = "pooled", projector: str = "medcap", num_image_tokens: int = 32
) -> MedcapModel:
    """Llama-3 8B + BiomedCLIP's vision tower, medcap's original model.

    Args:
        vision_model (str): open_clip name of the tower (``local-dir:`` offline).
        output (str): ``"pooled"`` (medcap) or ``"patch"`` (LLaVA-style, use ``projector="mlp"``).
        projector (str): ``"medcap"`` (pooled -> ``num_image_tokens``) or ``"mlp"`` (per patch).
        num_image_tokens (int): image tokens of the ``medcap`` projector.

    Returns:
        MedcapModel: decoder weights uninitialised; load them with a torchtune checkpointer.
    """
    return _biomedclip_model(llama3_8b(), vision_model, output, projector, num_image_tokens)


def llama3_1_8b_biomedclip(
    vision_model: str = BIOMEDCLIP, output: str = "pooled", projector: str = "medcap", num_image_tokens: int = 32
) -> MedcapModel:
    """Llama-3.1 8B + BiomedCLIP's vision tower (see :func:`llama3_8b_biomedclip`)."""
    return _biomedclip_model(llama3_1_8b(), vision_model, output, projector, num_image_tokens)


def text_only_model(decoder: TransformerDecoder) -> MedcapModel:
    """A decoder without an image side, for text-only uses such as an LLM judge.

    Args:
        decoder (TransformerDecoder): the language model.

    Returns:
        MedcapModel: a model whose ``embed`` takes no images.
    """
    return MedcapModel(decoder, None, image_token_id=-1)
