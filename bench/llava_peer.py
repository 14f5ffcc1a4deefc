"""Shared parts of the training benchmarks: medcap's model, its Hugging Face LLaVA twin, real batches.

Both sides have the same architecture and the same weights:

    images [n, 3, H, H] ──► CLIP ViT (patch 16, pre-LN, CLS + learned positions) ──► patch tokens [n, k, d_v]
                        ──► MLP projector (Linear, GELU, Linear) ──► [n, k, d]
    tokens [b, s] (k placeholders per image) ──► frozen Llama decoder ──► loss on the answer tokens

* **ours**: :class:`medcap.models.MedcapModel` from medcap's own parts: an open_clip
  ``VisionTransformer`` (the module ``local-dir:`` towers build, ``output="patch"``), medcap's
  ``MLPProjector`` and torchtune's Llama decoder (``smollm2_135m`` or a tiny one), trained the way
  ``recipes/full_finetune_single_device.py`` trains: ``set_trainable("encoder_and_projector")``,
  ``set_train_mode``, ``LabelPositionCrossEntropy`` (the LM head only at labelled positions).
* **peer**: ``transformers.LlavaForConditionalGeneration`` built from a ``CLIPVisionConfig`` and a
  ``LlamaConfig`` of the same sizes, the weights copied from ours (torchtune's ``tune_to_hf`` for
  the decoder, the open_clip -> HF CLIP key map below for the tower), language model and LM head
  frozen, ``vision_tower`` + ``multi_modal_projector`` trainable; its loss is the model's own
  (full-vocabulary logits at every position, mean over the labelled tokens).

Two details make the towers the same function: HF LLaVA feeds the projector a hidden state of the
encoder *without* CLIP's ``post_layernorm`` (``vision_feature_layer=-1`` here, the last layer;
LLaVA-1.5 uses -2), so ours is built with open_clip's ``final_ln_after_pool=True`` (the final
LayerNorm only on the pooled CLS, which neither side uses); and both drop the CLS token
(``vision_feature_select_strategy="default"``). HF's embedding table must hold the image token id,
so the peer uses an in-vocabulary special id that never occurs in the data (:data:`PEER_IMAGE_TOKEN_ID`)
where ours uses 49152 (one past SmolLM2's vocabulary, never embedded).

Peak memory is read from ``/proc/self/status`` (``VmHWM``, reset by writing 5 to
``/proc/self/clear_refs``), in a child process per side with ``MALLOC_MMAP_THRESHOLD_`` fixed so
freed tensors leave the resident set (see :func:`run_memory_child`).
"""

import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout

DEFAULT_DATA = Path(os.environ.get("MEDCAP_DATA", REPO_ROOT / ".." / "shared" / "data")) / "vqa_rad"
DEFAULT_LLM_DIR = REPO_ROOT / "assets" / "smollm2-135m-instruct"
OUR_IMAGE_TOKEN_ID = 49152  # SmolLM2's vocabulary size: medcap's placeholder, never embedded
PEER_IMAGE_TOKEN_ID = 3  # SmolLM2's "<repo_name>": in the vocabulary (HF embeds it), absent from VQA-RAD
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Size:
    """One model size of the benchmarks (both sides).

    Attributes:
        name (str): ``tiny`` or ``smollm2``.
        vision_width (int): ViT width ``d_v``; heads of 64 (tiny: 16).
        vision_layers (int): ViT blocks.
        vision_head_width (int): ViT head size.
        image_size (int): input side; ``(image_size / 16) ** 2`` image tokens.
        decoder (Dict[str, int]): Llama sizes.
    """

    name: str
    vision_width: int
    vision_layers: int
    vision_head_width: int
    image_size: int
    decoder: Dict[str, Any]

    @property
    def image_tokens(self) -> int:
        return (self.image_size // 16) ** 2


SMOLLM2_DECODER = dict(vocab_size=49152, num_layers=30, num_heads=9, num_kv_heads=3, embed_dim=576,
                       intermediate_dim=1536, rope_base=100_000, norm_eps=1e-5)
TINY_DECODER = dict(vocab_size=49152, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                    intermediate_dim=128, rope_base=100_000, norm_eps=1e-5)
SIZES = {
    # a ViT-S/16-sized tower (384 wide, 12 blocks of 6 heads, 22M parameters) at 224 px: 196 image tokens
    "smollm2": Size("smollm2", 384, 12, 64, 224, SMOLLM2_DECODER),
    "tiny": Size("tiny", 64, 2, 16, 64, TINY_DECODER),
}


def size_with_image(size: Size, image_size: Optional[int]) -> Size:
    """The same size at another image side (image tokens ``(side / 16) ** 2``)."""
    if image_size is None:
        return size
    if image_size % 16:
        raise ValueError(f"--image-size must be a multiple of the patch size 16, got {image_size}")
    return Size(size.name, size.vision_width, size.vision_layers, size.vision_head_width, image_size, size.decoder)


# ---------------------------------------------------------------------------------------------- models


def build_decoder(size: Size, max_seq_len: int = 1024):
    """torchtune's Llama decoder of ``size`` (SmolLM2-135M's builder for ``smollm2``)."""
    from torchtune.models.llama3_2._component_builders import llama3_2

    d = size.decoder
    return llama3_2(vocab_size=d["vocab_size"], num_layers=d["num_layers"], num_heads=d["num_heads"],
                    num_kv_heads=d["num_kv_heads"], embed_dim=d["embed_dim"], max_seq_len=max_seq_len,
                    intermediate_dim=d["intermediate_dim"], rope_base=d["rope_base"], norm_eps=d["norm_eps"],
                    scale_factor=1, tie_word_embeddings=True)


def build_ours(size: Size, seed: int = 0, llm_dir: Optional[Path] = None, max_seq_len: int = 1024):
    """medcap's model of ``size``; the decoder loaded from ``llm_dir`` when given (else seeded random).

    Returns:
        MedcapModel: decoder frozen (eval), tower + projector trainable (train mode), as the recipe sets it.
    """
    from open_clip.model import _build_vision_tower

    from medcap.models import medcap_model
    from medcap.models.projectors import MLPProjector
    from medcap.models.trainable import set_train_mode, set_trainable
    from medcap.models.vision import VisionTower

    torch.manual_seed(seed)
    decoder = build_decoder(size, max_seq_len)
    vision_cfg = dict(width=size.vision_width, layers=size.vision_layers, head_width=size.vision_head_width,
                      patch_size=16, image_size=size.image_size, mlp_ratio=4.0, final_ln_after_pool=True)
    visual = _build_vision_tower(size.vision_width, vision_cfg)  # what local-dir: open_clip towers build
    tower = VisionTower(visual, output="patch", image_size=size.image_size)
    projector = MLPProjector(size.vision_width, size.decoder["embed_dim"])
    model = medcap_model(decoder, tower, projector, image_token_id=OUR_IMAGE_TOKEN_ID)
    if llm_dir is not None:
        from omegaconf import OmegaConf

        from medcap.checkpoint.decoder import load_frozen_decoder

        checkpointer = OmegaConf.create({
            "_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(llm_dir),
            "checkpoint_files": ["model.safetensors"], "model_type": "LLAMA3_2",
            "output_dir": tempfile.mkdtemp(prefix="medcap_bench_ckpt_"),
        })
        load_frozen_decoder(checkpointer, model.decoder)
    set_trainable(model, "encoder_and_projector")
    set_train_mode(model)
    return model


def open_clip_to_hf_clip(state_dict: Dict[str, torch.Tensor], width: int) -> Dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` keys -> HF ``CLIPVisionModel`` keys (``vision_model.*``).

    ``attn.in_proj_weight`` [3 d, d] splits into q, k, v in that order. ``proj`` (the pooled
    projection) has no HF counterpart here and is dropped (neither side uses the pooled output).
    """
    out = {
        "vision_model.embeddings.class_embedding": state_dict["class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state_dict["conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state_dict["positional_embedding"],
        "vision_model.pre_layrnorm.weight": state_dict["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state_dict["ln_pre.bias"],
        "vision_model.post_layernorm.weight": state_dict["ln_post.weight"],
        "vision_model.post_layernorm.bias": state_dict["ln_post.bias"],
    }
    block = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for key, value in state_dict.items():
        match = block.fullmatch(key)
        if not match:
            continue
        layer, rest = match.groups()
        prefix = f"vision_model.encoder.layers.{layer}."
        if rest.startswith("attn.in_proj_"):
            kind = rest[len("attn.in_proj_"):]  # weight | bias
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.split(width, dim=0)):
                out[f"{prefix}self_attn.{part}.{kind}"] = chunk
            continue
        module, _, kind = rest.rpartition(".")
        if module not in names:
            raise KeyError(f"open_clip key {key!r} has no HF CLIP counterpart")
        out[f"{prefix}{names[module]}.{kind}"] = value
    return out


def build_peer(ours, size: Size):
    """``LlavaForConditionalGeneration`` of the same sizes carrying a copy of ``ours``'s weights.

    Returns:
        LlavaForConditionalGeneration: language model + LM head frozen (eval), vision tower and
        projector trainable (train mode), SDPA attention.
    """
    from torchtune.models.convert_weights import tune_to_hf
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    d = size.decoder
    head_dim = d["embed_dim"] // d["num_heads"]
    vision_config = CLIPVisionConfig(
        hidden_size=size.vision_width, intermediate_size=4 * size.vision_width, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_width // size.vision_head_width, image_size=size.image_size, patch_size=16,
        hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=size.vision_width,
    )
    text_config = LlamaConfig(
        vocab_size=d["vocab_size"], hidden_size=d["embed_dim"], intermediate_size=d["intermediate_dim"],
        num_hidden_layers=d["num_layers"], num_attention_heads=d["num_heads"], num_key_value_heads=d["num_kv_heads"],
        head_dim=head_dim, rms_norm_eps=d["norm_eps"], max_position_embeddings=2048, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": float(d["rope_base"])}, hidden_act="silu",
        bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=PEER_IMAGE_TOKEN_ID,
        image_seq_length=size.image_tokens, projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=-1, multimodal_projector_bias=True, tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    peer = LlavaForConditionalGeneration(config)

    decoder_sd = {k: v for k, v in ours.decoder.state_dict().items()}
    hf_decoder = tune_to_hf(decoder_sd, num_heads=d["num_heads"], num_kv_heads=d["num_kv_heads"],
                            dim=d["embed_dim"], head_dim=head_dim)
    hf_decoder.pop("lm_head.weight", None)  # tied to embed_tokens
    language_sd = {k[len("model."):]: v for k, v in hf_decoder.items()}
    _load_exact(peer.model.language_model, language_sd, "language_model")
    tower = ours.image_encoder.vision_tower.visual
    vision_sd = open_clip_to_hf_clip(tower.state_dict(), size.vision_width)
    if not any(k.startswith("vision_model.") for k in peer.model.vision_tower.state_dict()):
        vision_sd = {k[len("vision_model."):]: v for k, v in vision_sd.items()}  # a bare CLIPVisionTransformer
    _load_exact(peer.model.vision_tower, vision_sd, "vision_tower")
    projector = ours.image_encoder.projector
    _load_exact(peer.model.multi_modal_projector, {
        "linear_1.weight": projector.fc1.weight, "linear_1.bias": projector.fc1.bias,
        "linear_2.weight": projector.fc2.weight, "linear_2.bias": projector.fc2.bias,
    }, "multi_modal_projector")
    if peer.lm_head.weight.data_ptr() != peer.model.language_model.embed_tokens.weight.data_ptr():
        peer.lm_head.weight = peer.model.language_model.embed_tokens.weight  # tie as SmolLM2 does
    peer.requires_grad_(False)
    peer.model.vision_tower.requires_grad_(True)
    peer.model.multi_modal_projector.requires_grad_(True)
    peer.eval()
    peer.model.vision_tower.train()
    peer.model.multi_modal_projector.train()
    return peer


def _load_exact(module: nn.Module, state_dict: Dict[str, torch.Tensor], what: str) -> None:
    """Copy ``state_dict`` into ``module``, every key and shape matching (the buffers HF rebuilds excepted)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(("position_ids", "inv_freq"))]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise KeyError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    module.load_state_dict({k: v.detach().clone() for k, v in state_dict.items()}, strict=False)


def trainable_parameters(model: nn.Module) -> List[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------- data


def vqarad_dataset(size: Size, data_root: Path, llm_dir: Path, split: str = "train", max_seq_len: int = 512):
    """The VQA-RAD ``split`` converted by medcap's converter, as medcap's training dataset for ``size``.

    Returns:
        ShareGPTImageDataset: tokenized samples (``size.image_tokens`` placeholders per image) whose
        images are loaded and transformed (open_clip eval preprocessing at ``size.image_size``) on access.
    """
    from medcap.data import medcap_transform, open_clip_image_transform, sharegpt_image_dataset
    from medcap.data.converters import ConvertOptions, convert_vqarad
    from medcap.models.smollm2 import smollm2_tokenizer

    records = convert_vqarad(str(data_root), [split], options=ConvertOptions(empty_answers="keep"))
    folder = Path(tempfile.mkdtemp(prefix="medcap_bench_data_"))
    source = folder / f"vqarad_{split}.json"
    source.write_text(json.dumps(records))
    tokenizer = smollm2_tokenizer(str(llm_dir))
    transform = medcap_transform(tokenizer, max_seq_len, open_clip_image_transform(image_size=size.image_size),
                                 num_image_tokens=size.image_tokens)
    return sharegpt_image_dataset(transform, str(source))


def collate_ours(samples: List[Dict[str, Any]], pad_id: int) -> Dict[str, Any]:
    """medcap's collate (``medcap.data.padded_collate_images``)."""
    from medcap.data import padded_collate_images

    return padded_collate_images(samples, pad_id=pad_id)


def collate_peer(samples: List[Dict[str, Any]], pad_id: int) -> Dict[str, torch.Tensor]:
    """What TRL's collator hands LLaVA: right padding to the longest, an attention mask, pixel values.

    The placeholders carry the peer's image id; labels as medcap's (-100 on prompt and padding).
    """
    longest = max(len(sample["tokens"]) for sample in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)  # [b, s]
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)  # [b, s]
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)  # [b, s]
    for row, sample in enumerate(samples):
        n = len(sample["tokens"])
        tokens = torch.tensor(sample["tokens"])
        if bool((tokens == PEER_IMAGE_TOKEN_ID).any()):
            raise ValueError(f"token id {PEER_IMAGE_TOKEN_ID} (the peer's image id) occurs in the text")
        input_ids[row, :n] = tokens.masked_fill(tokens == OUR_IMAGE_TOKEN_ID, PEER_IMAGE_TOKEN_ID)
        labels[row, :n] = torch.tensor(sample["labels"])
        attention_mask[row, :n] = 1
    pixel_values = torch.stack([sample["image"] for sample in samples])  # [b, 3, H, H]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values}


def synthetic_samples(batch: int, image_tokens: int, text_tokens: int, answer_tokens: int, image_size: int,
                      seed: int = 0) -> List[Dict[str, Any]]:
    """Samples of an exact shape: ``image_tokens`` placeholders then ``text_tokens`` random ids, the last
    ``answer_tokens`` of them labelled (a prompt + short answer), random pixels. For the scaling table."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(batch):
        text = torch.randint(10, 49000, (text_tokens,), generator=generator).tolist()
        tokens = [1] + [OUR_IMAGE_TOKEN_ID] * image_tokens + text
        labels = [IGNORE_INDEX] * (len(tokens) - answer_tokens) + tokens[-answer_tokens:]
        image = torch.randn(3, image_size, image_size, generator=generator)
        samples.append({"tokens": tokens, "labels": labels, "image": image})
    return samples


# ---------------------------------------------------------------------------------------------- steps


def loss_ours(model, batch: Dict[str, Any], loss_fn) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens, as the recipe computes it (LM head at labels only)."""
    hidden = model(batch["tokens"], images=batch["images"])  # [b, s, d]
    loss_sum, num_tokens = loss_fn(hidden, batch["labels"], model.lm_head)
    return loss_sum / max(num_tokens, 1)


def loss_peer(peer, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The LLaVA model's own loss (full-vocabulary logits, mean over labelled tokens)."""
    return peer(**batch).loss


class Trainer:
    """One side's training step: forward, loss, backward, clip to norm 1, AdamW step, zero grads.

    The recipe's step (``recipes/full_finetune_single_device.py`` with ``clip_grad_norm: 1.0`` and
    ``torch.optim.AdamW``), the same for both sides.
    """

    def __init__(self, model: nn.Module, loss: Callable[[Any], torch.Tensor], lr: float = 1e-4, **adamw: Any):
        self.model = model
        self.loss = loss
        self.params = trainable_parameters(model)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01, **adamw)

    def step(self, batch: Any) -> float:
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, max_norm=1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def check_loss_parity(ours, peer, batch_ours, batch_peer, loss_fn, tolerance: float = 1e-4) -> Dict[str, float]:
    """Both sides' loss on one batch and the largest relative gradient difference of the projector.

    Returns:
        Dict[str, float]: ``loss_ours``, ``loss_peer``, ``abs_diff``, ``grad_rel_diff``, ``ok``.
    """
    for model in (ours, peer):
        for p in trainable_parameters(model):
            p.grad = None
    a = loss_ours(ours, batch_ours, loss_fn)
    b = loss_peer(peer, batch_peer)
    a.backward()
    b.backward()
    ga = torch.cat([ours.image_encoder.projector.fc1.weight.grad.flatten(), ours.image_encoder.projector.fc2.weight.grad.flatten()])
    gb = torch.cat([peer.model.multi_modal_projector.linear_1.weight.grad.flatten(),
                    peer.model.multi_modal_projector.linear_2.weight.grad.flatten()])
    rel = float((ga - gb).norm() / gb.norm().clamp_min(1e-30))
    for model in (ours, peer):
        for p in trainable_parameters(model):
            p.grad = None
    a, b = a.detach(), b.detach()
    diff = abs(float(a) - float(b))
    return {"loss_ours": float(a), "loss_peer": float(b), "abs_diff": diff, "grad_rel_diff": rel,
            "ok": float(diff <= tolerance)}


# ---------------------------------------------------------------------------------------------- timing, memory


def interleaved(runs: Dict[str, Callable[[], Any]], repeats: int, clock: Callable[[], float] = time.perf_counter
                ) -> Dict[str, List[float]]:
    """Seconds of each callable, repeated in rotating order (ABAB..., then BABA...) to spread the noise.

    ``clock=time.process_time`` counts this process's CPU seconds instead of wall-clock ones: with one
    thread on a core that other processes share, it leaves out the time slices they take.
    """
    names = list(runs)
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            start = clock()
            runs[name]()
            seconds[name].append(clock() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate now: the best of ``repeats`` ``n x n @ n x n`` products (GFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def rss_mb() -> Dict[str, float]:
    """Resident set now and its peak (``VmRSS``, ``VmHWM``) in MB."""
    status = open("/proc/self/status").read()
    values = {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}
    return {"rss": values["VmRSS"], "peak": values["VmHWM"]}


def reset_peak_rss() -> None:
    """Set ``VmHWM`` to the current resident set (Linux ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_memory_child(script: Path, args: Sequence[str], timeout: float = 900) -> Dict[str, Any]:
    """Run ``script args`` in a fresh process with allocations >= 64 KiB mmapped (returned to the OS on
    free, so the resident set follows the live tensors); it prints one JSON line last."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"memory child failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def step_memory(step: Callable[[], Any], warmup: Callable[[], Any]) -> Dict[str, float]:
    """Resident memory before a step (weights, optimizer state, libraries: after ``warmup``) and the
    step's peak above it (activations, gradients, workspace), in MB."""
    warmup()
    before = rss_mb()["rss"]
    reset_peak_rss()
    step()
    peak = rss_mb()["peak"]
    return {"resident_mb": before, "peak_mb": peak, "step_mb": peak - before}


# ---------------------------------------------------------------------------------------------- FLOPs


def step_flops(size: Size, tokens: torch.Tensor, labels: torch.Tensor, num_images: int, full_vocab: bool = False,
               pad_id: Optional[int] = None) -> Dict[str, float]:
    """Analytical FLOPs of one training step of the frozen-decoder model (a multiply-add = 2 FLOPs).

    With ``P`` the decoder's matmul parameters per layer (q, k, v, o, SwiGLU w1 w2 w3), ``L`` layers,
    ``s`` the padded length, ``b`` rows, ``d`` width, ``V`` vocabulary, ``n`` labelled tokens, and for
    the tower ``P_v`` matmul parameters per block, ``L_v`` blocks, ``t = k + 1`` tokens, ``d_v`` width,
    ``N_img`` images, ``k`` image tokens each, ``P_proj`` projector parameters:

    * decoder (frozen: the backward computes input gradients only, no weight gradients, so each matmul
      costs 2 + 2 FLOPs per parameter per token): ``4 * L * P * b * s`` plus attention
      ``L * (4 + 8) * b * s^2 * d`` (scores and values, forward; the backward twice that; full square,
      as the kernels compute it);
    * LM head at the labelled positions: ``4 * n * d * V`` (``full_vocab``: every position, ``b * s``);
    * projector (trainable: forward 2, input grad 2, weight grad 2): ``6 * N_img * k * P_proj``;
    * tower (trainable): ``6 * N_img * t * L_v * P_v + L_v * 12 * N_img * t^2 * d_v`` + patch embedding
      ``4 * N_img * k * 3 * 16^2 * d_v`` (forward and weight grad; no pixel gradient).

    Norms, activations, softmax and the optimizer are left out (a few % at these sizes).
    """
    dec = size.decoder
    d, f, V, L = dec["embed_dim"], dec["intermediate_dim"], dec["vocab_size"], dec["num_layers"]
    head_dim = d // dec["num_heads"]
    P = d * d + 2 * d * dec["num_kv_heads"] * head_dim + d * d + 3 * d * f
    b, s = tokens.shape
    n_label = int((labels[:, 1:] != IGNORE_INDEX).sum())
    decoder = 4 * L * P * b * s + L * 12 * b * s * s * d
    head = 4 * (b * s if full_vocab else n_label) * d * V
    dv, Lv, k = size.vision_width, size.vision_layers, size.image_tokens
    t = k + 1
    Pv = 4 * dv * dv + 2 * dv * 4 * dv
    tower = 6 * num_images * t * Lv * Pv + Lv * 12 * num_images * t * t * dv + 4 * num_images * k * 3 * 256 * dv
    projector = 6 * num_images * k * (dv * d + d * d)
    total = decoder + head + tower + projector
    return {"decoder": decoder, "lm_head": head, "tower": tower, "projector": projector, "total": total}


def machine_conditions() -> str:
    load = os.getloadavg()
    threads = torch.get_num_threads()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (f"torch {torch.__version__}, {threads} thread(s), CPU affinity {affinity}, load average "
            f"{load[0]:.2f}/{load[1]:.2f} (1/5 min), {os.cpu_count()} cores")
