"""The training benchmark's peer is the same function as medcap's model, and its FLOP formula is right.

bench/llava_peer.py builds medcap's model and a ``transformers`` LLaVA twin with copied weights;
every ratio of bench/train_step.py rests on both computing the same loss. Needs the bench-only
requirement (requirements-bench.txt: transformers); skipped without it.
"""

import pytest
import torch

from helpers import load_script

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def lp():
    return load_script("bench/llava_peer.py")


@pytest.fixture(scope="module")
def tiny_pair(lp):
    torch.manual_seed(0)
    size = lp.SIZES["tiny"]
    ours = lp.build_ours(size, seed=0)
    with torch.no_grad():  # a realistic loss scale (the default N(0, 1) embedding gives losses ~60)
        ours.decoder.tok_embeddings.weight.mul_(0.05)
    return size, ours, lp.build_peer(ours, size)


def test_same_loss_and_gradient_on_padded_batch(lp, tiny_pair):
    from medcap.training import LabelPositionCrossEntropy

    size, ours, peer = tiny_pair
    # rows of different length: right padding, an attention mask on the peer's side, causal only on ours
    samples = lp.synthetic_samples(2, size.image_tokens, 12, 4, size.image_size, seed=1)
    samples += lp.synthetic_samples(1, size.image_tokens, 5, 3, size.image_size, seed=2)
    parity = lp.check_loss_parity(ours, peer, lp.collate_ours(samples, pad_id=0), lp.collate_peer(samples, pad_id=0),
                                  LabelPositionCrossEntropy())
    assert 5.0 < parity["loss_ours"] < 20.0  # ~ln(49152) = 10.8 for a near-uniform tiny model
    assert parity["abs_diff"] <= 1e-4
    assert parity["grad_rel_diff"] <= 1e-4


def test_peer_differs_when_a_weight_differs(lp, tiny_pair):
    """The parity check can fail: one changed tower weight on the peer's side shows in the loss."""
    from medcap.training import LabelPositionCrossEntropy

    size, ours, _ = tiny_pair
    peer = lp.build_peer(ours, size)
    with torch.no_grad():
        peer.model.vision_tower.state_dict()[next(k for k in peer.model.vision_tower.state_dict() if "fc1.weight" in k)].mul_(3.0)
    samples = lp.synthetic_samples(2, size.image_tokens, 8, 4, size.image_size, seed=3)
    parity = lp.check_loss_parity(ours, peer, lp.collate_ours(samples, 0), lp.collate_peer(samples, 0), LabelPositionCrossEntropy())
    assert parity["abs_diff"] > 1e-4 or parity["grad_rel_diff"] > 1e-3


def test_step_flops_match_torch_flop_counter(lp, tiny_pair):
    """The analytical FLOPs of our step agree with torch's FlopCounterMode (matmuls + attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from medcap.training import LabelPositionCrossEntropy

    size, ours, _ = tiny_pair
    samples = lp.synthetic_samples(3, size.image_tokens, 40, 6, size.image_size, seed=4)
    batch = lp.collate_ours(samples, pad_id=0)
    counter = FlopCounterMode(display=False)
    with counter:
        lp.loss_ours(ours, batch, LabelPositionCrossEntropy()).backward()
    ours.zero_grad(set_to_none=True)
    analytical = lp.step_flops(size, batch["tokens"], batch["labels"], num_images=3)["total"]
    assert analytical == pytest.approx(counter.get_total_flops(), rel=0.1)
