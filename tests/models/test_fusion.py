"""Fusion: image tokens land exactly at the placeholders; the label-position loss equals plain CE."""

import pytest
import torch
import torch.nn.functional as F
from helpers import build_tiny_model

from medcap.training import LabelPositionCrossEntropy
from medcap.utils.tiny import TINY_VOCAB_SIZE

IMAGE = TINY_VOCAB_SIZE


@pytest.fixture(scope="module")
def model(tiny_assets):
    return build_tiny_model(tiny_assets).eval()


def test_image_tokens_scattered_at_placeholders_with_uneven_counts(model):
    # row 0: one image (4 placeholders) after two text tokens; row 1: text only, right-padded.
    tokens = torch.tensor([[256, 72, IMAGE, IMAGE, IMAGE, IMAGE, 105, 265], [256, 72, 105, 33, 265, 260, 260, 260]])
    images = torch.randn(1, 3, 32, 32)
    embeds = model.embed(tokens, images)  # [2, 8, 64]
    image_tokens = model.image_encoder(images)  # [1, 4, 64]
    text = model.decoder.tok_embeddings(tokens.clamp(max=TINY_VOCAB_SIZE - 1))
    torch.testing.assert_close(embeds[0, 2:6], image_tokens[0], rtol=0, atol=0)
    torch.testing.assert_close(embeds[0, [0, 1, 6, 7]], text[0, [0, 1, 6, 7]], rtol=0, atol=0)
    torch.testing.assert_close(embeds[1], text[1], rtol=0, atol=0)


def test_two_images_fill_placeholders_in_batch_order(model):
    tokens = torch.tensor([[IMAGE] * 4 + [72], [72] + [IMAGE] * 4])
    images = torch.randn(2, 3, 32, 32)
    embeds = model.embed(tokens, images)
    image_tokens = model.image_encoder(images)
    torch.testing.assert_close(embeds[0, :4], image_tokens[0], rtol=0, atol=0)
    torch.testing.assert_close(embeds[1, 1:], image_tokens[1], rtol=0, atol=0)


@pytest.mark.parametrize("placeholders,num_images", [(3, 1), (4, 0), (8, 1), (0, 1)])
def test_placeholder_count_mismatch_is_a_clear_error(model, placeholders, num_images):
    tokens = torch.tensor([[256] + [IMAGE] * placeholders + [72]])
    images = torch.randn(num_images, 3, 32, 32) if num_images else None
    with pytest.raises(ValueError, match=rf"hold {placeholders} placeholders \(per sequence: \[{placeholders}\]\) but {num_images} images x 4 tokens"):
        model.embed(tokens, images)


def test_label_position_loss_equals_cross_entropy_over_full_logits(model):
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (3, 12))
    tokens[0, 1:5] = IMAGE
    labels = torch.full_like(tokens, -100)
    labels[0, 7:12] = tokens[0, 7:12]
    labels[1, 3:6] = tokens[1, 3:6]
    labels[2, 10:] = tokens[2, 10:]
    images = torch.randn(1, 3, 32, 32)
    hidden = model(tokens, images=images)  # [3, 12, 64]
    loss_sum, count = LabelPositionCrossEntropy()(hidden, labels, model.lm_head)
    full_logits = model.lm_head(hidden)  # [3, 12, vocab]
    reference = F.cross_entropy(full_logits[:, :-1].reshape(-1, full_logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert count == 5 + 3 + 2  # every label sits at position >= 1, so each is predicted by the position before it
    torch.testing.assert_close(loss_sum / count, reference, rtol=1e-6, atol=1e-6)


def test_label_position_loss_gradients_match_full_logits(model):
    torch.manual_seed(1)
    tokens = torch.randint(0, 256, (2, 10))
    labels = torch.full_like(tokens, -100)
    labels[:, 5:] = tokens[:, 5:]
    hidden = model(tokens).detach().requires_grad_(True)
    loss_sum, count = LabelPositionCrossEntropy()(hidden, labels, model.lm_head)
    (loss_sum / count).backward()
    ours = hidden.grad.clone()
    hidden.grad = None
    logits = model.lm_head(hidden)
    F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)).backward()
    torch.testing.assert_close(ours, hidden.grad, rtol=1e-5, atol=1e-7)


def test_forward_matches_torchtune_decoder_for_text(model):
    tokens = torch.randint(0, 256, (2, 9))
    ours = model.lm_head(model(tokens))
    reference = model.decoder(tokens)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
