"""The frozen decoder loads through torchtune's Meta and HF checkpointers to the same weights."""

import json

import torch
from safetensors.torch import save_file
from torchtune.models.convert_weights import meta_to_tune, tune_to_hf
from torchtune.training import FullModelHFCheckpointer, FullModelMetaCheckpointer

from medcap.utils.tiny import TINY_DECODER


def test_meta_and_hf_checkpointers_give_identical_decoders(tiny_assets, tmp_path):
    decoder_dir = tiny_assets["decoder"].parent
    meta = FullModelMetaCheckpointer(checkpoint_dir=str(decoder_dir), checkpoint_files=["consolidated.00.pth"],
                                     model_type="LLAMA3", output_dir=str(tmp_path / "out_meta"))
    from_meta = meta.load_checkpoint()["model"]
    reference = meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True))
    assert set(from_meta) == set(reference)

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    hf_state = tune_to_hf(reference, num_heads=TINY_DECODER["num_heads"], num_kv_heads=TINY_DECODER["num_kv_heads"],
                          dim=TINY_DECODER["embed_dim"])
    save_file({k: v.contiguous() for k, v in hf_state.items()}, hf_dir / "model.safetensors")
    (hf_dir / "config.json").write_text(json.dumps({
        "num_attention_heads": TINY_DECODER["num_heads"], "num_key_value_heads": TINY_DECODER["num_kv_heads"],
        "hidden_size": TINY_DECODER["embed_dim"], "head_dim": TINY_DECODER["embed_dim"] // TINY_DECODER["num_heads"],
    }))
    hf = FullModelHFCheckpointer(checkpoint_dir=str(hf_dir), checkpoint_files=["model.safetensors"],
                                 model_type="LLAMA3", output_dir=str(tmp_path / "out_hf"))
    from_hf = hf.load_checkpoint()["model"]
    assert set(from_hf) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(from_meta[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(from_hf[key], value, rtol=0, atol=0, msg=key)
