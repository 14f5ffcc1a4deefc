"""Model and component builders."""

from medcap.models.chatml_tokenizer import ChatMLTokenizer
from medcap.models.builders import BIOMEDCLIP, llama3_1_8b_biomedclip, llama3_8b_biomedclip, medcap_model, text_only_model
from medcap.models.fusion import ImageEncoder, MedcapModel
from medcap.models.lora import DecoderLoRA, decoder_lora
from medcap.models.quantize import DECODER_QUANTIZATIONS
from medcap.models.projectors import MedcapProjector, MLPProjector, medcap_projector, mlp_projector
from medcap.models.smollm2 import smollm2_135m, smollm2_tokenizer
from medcap.models.tokenizers import llama3_tokenizer
from medcap.models.trainable import TRAINABLE_MODES, set_train_mode, set_trainable
from medcap.models.vision import VisionTower, open_clip_vision_tower

__all__ = [
    "BIOMEDCLIP", "ChatMLTokenizer", "DECODER_QUANTIZATIONS", "DecoderLoRA", "decoder_lora", "smollm2_135m", "smollm2_tokenizer", "ImageEncoder", "MedcapModel", "MedcapProjector", "MLPProjector", "TRAINABLE_MODES", "VisionTower",
    "llama3_1_8b_biomedclip", "llama3_8b_biomedclip", "llama3_tokenizer", "medcap_model", "medcap_projector",
    "mlp_projector", "open_clip_vision_tower", "set_train_mode", "set_trainable", "text_only_model",
]
