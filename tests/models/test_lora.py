"""Decoder LoRA: exact trainable names per set, identity at initialisation, QLoRA, refusals."""

import pytest
import torch
from torch import nn

from medcap.checkpoint.decoder import load_decoder_weights
from medcap.models import decoder_lora, set_trainable
from medcap.models.builders import prepare_decoder
from medcap.models.fusion import ImageEncoder, MedcapModel
from medcap.utils.tiny import TINY_DECODER


def _model(tiny_assets, method=None, lora=None, targets=("q_proj", "v_proj")):
    from helpers import build_tiny_model
    from torchtune.models.convert_weights import meta_to_tune
    from torchtune.models.llama3 import llama3

    reference = build_tiny_model(tiny_assets)  # the tiny image side (seeded)
    decoder = prepare_decoder(llama3(**TINY_DECODER), method, decoder_lora(rank=4, alpha=8, target_modules=targets) if lora else None)
    load_decoder_weights(decoder, meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True)))
    encoder = ImageEncoder(reference.image_encoder.vision_tower, reference.image_encoder.projector)
    return MedcapModel(decoder, encoder, image_token_id=reference.image_token_id), reference


def _lora_names(targets):
    return [f"decoder.layers.{i}.attn.{t}.lora_{ab}.weight" for i in range(TINY_DECODER["num_layers"]) for t in targets for ab in "ab"]


def test_exact_trainable_names_of_each_lora_set(tiny_assets):
    model, _ = _model(tiny_assets, lora=True)
    image_side = [f"image_encoder.{n}" for n, _ in model.image_encoder.named_parameters()]
    projector = [n for n in image_side if n.startswith("image_encoder.projector.")]
    assert set_trainable(model, "decoder_lora") == _lora_names(("q_proj", "v_proj"))
    assert set_trainable(model, "projector_and_decoder_lora") == _lora_names(("q_proj", "v_proj")) + projector
    assert set_trainable(model, "encoder_projector_and_decoder_lora") == _lora_names(("q_proj", "v_proj")) + image_side
    # the image-only sets keep every adapter frozen
    assert set_trainable(model, "encoder_and_projector") == image_side
    assert not any(p.requires_grad for n, p in model.decoder.named_parameters() if "lora" not in n)


def test_lora_sets_need_adapters_in_the_model(tiny_assets):
    model, _ = _model(tiny_assets)
    with pytest.raises(ValueError, match="needs decoder LoRA adapters: set model.decoder_lora"):
        set_trainable(model, "decoder_lora")
    with pytest.raises(ValueError, match=r"target_modules must be a non-empty subset of .*got \['q'\]"):
        decoder_lora(target_modules=["q"])


@pytest.mark.parametrize("method", [None, "nf4"])
def test_fresh_adapters_compute_the_base_model_and_train(tiny_assets, method):
    from torchtune.modules.peft import LoRALinear

    adapted, _ = _model(tiny_assets, method, lora=True, targets=("q_proj", "k_proj", "v_proj", "output_proj"))
    plain, _ = _model(tiny_assets, method)
    layer = adapted.decoder.layers[0].attn
    assert isinstance(layer.q_proj, LoRALinear) and isinstance(layer.output_proj, LoRALinear)
    assert layer.q_proj.weight is not None and (type(layer.q_proj.weight).__name__ == "NF4Tensor") == (method == "nf4")
    assert type(adapted.decoder.layers[0].mlp.w1) is type(plain.decoder.layers[0].mlp.w1)  # not a target
    tokens = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adapted.lm_head(adapted(tokens)), plain.lm_head(plain(tokens)), rtol=0, atol=0)
    # a gradient reaches lora_b only (lora_b = 0 means lora_a gets none at the first step)
    set_trainable(adapted, "decoder_lora")
    adapted.lm_head(adapted(tokens)).logsumexp(-1).sum().backward()
    assert layer.q_proj.lora_b.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in adapted.named_parameters() if "lora" not in n)


def test_lora_refuses_a_bitsandbytes_base(tiny_assets):
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.q_proj is a bitsandbytes Linear4bit"):
        _model(tiny_assets, "bnb_nf4", lora=True)


def test_lora_on_an_int8_base_trains_the_adapters(tiny_assets):
    model, _ = _model(tiny_assets, "int8", lora=True)
    set_trainable(model, "decoder_lora")
    tokens = torch.randint(0, 200, (1, 8), generator=torch.Generator().manual_seed(0))
    model.lm_head(model(tokens)).logsumexp(-1).sum().backward()
    assert model.decoder.layers[1].attn.v_proj.lora_b.weight.grad.abs().sum() > 0
    assert type(model.decoder.layers[1].attn.v_proj.weight) is not nn.Parameter  # the int8 base stays quantized
