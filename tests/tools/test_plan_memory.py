"""tools/plan_memory.py: the meta-device plan against real tensors, the activation formula against autograd."""

import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT
from omegaconf import OmegaConf

from medcap.models.memory import GIB, decoder_activation_bytes_per_token, parse_bytes

TINY = REPO_ROOT / "recipes/configs/medcap/tiny_cpu.yaml"
LLAMA = "recipes/configs/medcap/llama3_8B_biomedclip_single_device.yaml"


def _plan_module():
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import plan_memory

    return plan_memory


def _tiny_cfg(tiny_assets, *overrides):
    return OmegaConf.merge(OmegaConf.load(TINY), OmegaConf.from_dotlist([f"assets_dir={tiny_assets['root']}", "optimizer_in_bwd=False", *overrides]))


@pytest.mark.parametrize("method", [None, "nf4"])
def test_weights_grads_and_optimizer_rows_equal_the_real_model(tiny_assets, method):
    from medcap import config as medcap_config
    from medcap.checkpoint.decoder import load_frozen_decoder
    from medcap.models import set_trainable
    from medcap.models.quantize import decoder_weight_bytes

    cfg = _tiny_cfg(tiny_assets, f"model.decoder_quantization={'null' if method is None else method}", "dtype=fp32")
    plan = _plan_module().plan_from_config(cfg)
    model = medcap_config.instantiate(cfg.model)
    load_frozen_decoder(cfg.checkpointer, model.decoder)
    names = set_trainable(model, cfg.trainable)
    real = decoder_weight_bytes(model.decoder)
    frozen = {k: v for k, v in plan.rows.items() if k.startswith("frozen decoder")}
    assert frozen == {f"frozen decoder weights ({kind})": n for kind, n in real.items()}
    params = [p for n, p in model.named_parameters() if n in set(names)]
    trainable_bytes = sum(p.numel() * 4 for p in params)
    assert plan.rows["trainable weights"] == plan.rows["gradients"] == trainable_bytes
    optimizer = torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state_bytes = sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    assert plan.rows["optimizer state (AdamW, 2 x fp32)"] == state_bytes


def test_activation_formula_equals_what_autograd_saves(tiny_assets):
    """Bytes autograd keeps for one frozen layer with a gradient to its input, parameters and RoPE cache excluded."""
    from torchtune.models.llama3 import llama3

    from medcap.utils.tiny import TINY_DECODER

    decoder = llama3(**TINY_DECODER).requires_grad_(False).eval()
    constant = {t.untyped_storage().data_ptr() for t in list(decoder.parameters()) + list(decoder.buffers())}
    saved = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in constant:
            saved[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    x = torch.randn(3, 40, TINY_DECODER["embed_dim"], requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        decoder.layers[0](x * 1.0)
    assert sum(saved.values()) == 3 * 40 * decoder_activation_bytes_per_token(decoder, 4) + 2 * 3 * 40 * 4  # + the two rsqrt [b, s, 1]


def test_verdicts_for_llama3_8b():
    def plan(*overrides, gpus=1):
        cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / LLAMA), OmegaConf.from_dotlist(["model.vision_model=timm:vit_base_patch16_224", *overrides]))
        return _plan_module().plan_from_config(cfg, gpus=gpus, gpu_memory=24 * GIB)

    bf16, nf4, sharded = plan(), plan("model.decoder_quantization=nf4"), plan(gpus=8)
    rows = bf16.rows
    assert rows["frozen decoder weights (bfloat16)"] == pytest.approx(8_030_261_248 * 2, rel=0.01)  # Llama-3 8B, untied head
    assert not bf16.fits and nf4.fits and sharded.fits
    assert nf4.rows["frozen decoder weights (nf4)"] < 0.3 * rows["frozen decoder weights (bfloat16)"]
    assert sharded.rows["frozen decoder weights (bfloat16)"] == rows["frozen decoder weights (bfloat16)"] // 8


def test_cli_prints_the_table(tiny_assets):
    out = subprocess.run([sys.executable, "tools/plan_memory.py", "--config", str(TINY), f"assets_dir={tiny_assets['root']}",
                          "model.decoder_quantization=int8", "--gpu-memory", "16GiB"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("frozen decoder weights (int8)", "optimizer state (AdamW, 2 x fp32)", "(alt) optimizer state (AdamW8bit)",
                "activations (decoder)", "(alt) activations (decoder) with checkpointing", "fits in 16 GiB"):
        assert row in out.stdout, row


def test_parse_bytes():
    assert parse_bytes("24GiB") == parse_bytes("24GB") == parse_bytes("24G") == 24 * GIB
    assert parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1000") == 1000
