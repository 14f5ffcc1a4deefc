"""The judge loads its decoder through the training loader: ``decoder_quantization=nf4`` quantizes it
layer by layer (the 70B-in-4-bit path), on the same format as the training decoder."""

import pytest
import torch
from helpers import REPO_ROOT, load_script
from omegaconf import OmegaConf

from medcap.utils.tiny import TINY_DECODER


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_judge_decoder_quantized_while_loading(tiny_assets, tmp_path, method):
    from torchtune.models.convert_weights import meta_to_tune
    from torchtune.models.llama3 import llama3

    predictions = tmp_path / "p.csv"
    predictions.write_text("question,reference,prediction,answer_type\nIs there a fracture?,yes,yes,CLOSED\n")
    cfg = OmegaConf.merge(OmegaConf.load(REPO_ROOT / "recipes/configs/medcap/judge_tiny_cpu.yaml"), OmegaConf.from_dotlist(
        [f"assets_dir={tiny_assets['root']}", f"predictions={predictions}", f"output={tmp_path / 'o.csv'}", f"decoder_quantization={method}"]))
    recipe = load_script("recipes/llm_judge.py").LLMJudgeRecipe(cfg)
    recipe.setup(cfg)
    model = recipe._model
    quantized = [n for n, m in model.decoder.named_modules() if n.startswith("layers.") and hasattr(m, "weight") and type(m.weight) is not torch.nn.Parameter]
    assert len(quantized) == 2 * 7 and type(model.decoder.output.weight) is torch.nn.Parameter
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    reference = llama3(**TINY_DECODER)
    reference.load_state_dict(meta_to_tune(torch.load(tiny_assets["decoder"], weights_only=True)))
    tokens = torch.tensor([[3, 70, 101, 12, 200, 45, 9, 33]])
    with torch.no_grad():
        expected, got = reference(tokens).float(), model.lm_head(model(tokens))
    cosine = torch.nn.functional.cosine_similarity(expected.flatten(), got.flatten(), dim=0)
    assert cosine > (0.95 if method == "nf4" else 0.9999) and not torch.equal(expected, got), float(cosine)
