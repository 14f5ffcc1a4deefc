"""Batched KV-cache decoding equals unbatched decoding equals full recomputation."""

import pytest
import torch
from helpers import build_tiny_model

from medcap.generation import generate, sample_next_token
from medcap.utils.tiny import TINY_VOCAB_SIZE

IMAGE = TINY_VOCAB_SIZE
PAD, EOT, EOS = 260, 265, 257


@pytest.fixture(scope="module")
def model(tiny_assets):
    return build_tiny_model(tiny_assets, seed=5).eval()


def _prompts():
    torch.manual_seed(0)
    with_image = [256, 262, 117, 263] + [IMAGE] * 4 + torch.randint(0, 256, (5,)).tolist() + [265, 262, 97, 263]
    text_long = [256] + torch.randint(0, 256, (14,)).tolist()
    short_image = [256] + [IMAGE] * 4 + [72, 105]
    return [with_image, text_long, short_image], torch.randn(2, 3, 32, 32)


def _full_recompute_reference(model, prompt, image, max_new_tokens):
    """Greedy decoding by re-running the whole unpadded sequence each step, no mask tricks."""
    tokens = list(prompt)
    out = []
    for _ in range(max_new_tokens):
        hidden = model(torch.tensor([tokens]), images=image)
        token = int(model.lm_head(hidden[:, -1]).argmax(-1))
        out.append(token)
        if token in (EOT, EOS):
            break
        tokens.append(token)
    return out[:-1] if out and out[-1] in (EOT, EOS) else out


def test_batched_equals_unbatched_equals_recompute(model):
    prompts, images = _prompts()
    kwargs = dict(pad_id=PAD, stop_tokens=[EOT, EOS], max_new_tokens=12)
    batched = generate(model, prompts, images, **kwargs)
    no_cache = generate(model, prompts, images, use_cache=False, **kwargs)
    per_image = [images[0:1], None, images[1:2]]
    unbatched = [generate(model, [p], img, **kwargs)[0] for p, img in zip(prompts, per_image)]
    with torch.no_grad():
        reference = [_full_recompute_reference(model, p, img, 12) for p, img in zip(prompts, per_image)]
    assert batched == unbatched == no_cache == reference
    assert all(len(out) > 0 for out in batched)


def test_logits_of_cached_steps_match_recompute(model):
    prompts, images = _prompts()
    prompt, image = prompts[0], images[:1]
    generated = generate(model, [prompt], image, pad_id=PAD, stop_tokens=[], max_new_tokens=6)[0]
    with torch.no_grad():
        hidden = model(torch.tensor([prompt + generated]), images=image)
        greedy = model.lm_head(hidden[0, len(prompt) - 1: -1]).argmax(-1).tolist()
    assert greedy == generated


def test_each_row_stops_at_its_own_stop_token(model):
    prompts, images = _prompts()
    free = generate(model, prompts, images, pad_id=PAD, stop_tokens=[], max_new_tokens=8)
    # stop each row at the token it produced at a different step
    stops = [free[0][2], free[1][5]]
    stopped = generate(model, prompts, images, pad_id=PAD, stop_tokens=stops, max_new_tokens=8)
    for row, out in enumerate(free):
        first = next((i for i, t in enumerate(out) if t in stops), len(out))
        assert stopped[row] == out[:first]


def test_sampling_is_seeded_and_respects_top_k():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    draws = [sample_next_token(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert {int(d[0]) for d in draws} == {2, 3} and {int(d[1]) for d in draws} == {0, 1}
    again = [sample_next_token(logits, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(draws, again))
    assert sample_next_token(logits).tolist() == [3, 0]
