"""Cross-entropy that applies the LM head only where a label exists.

With 32 image tokens, a prompt and a short answer, most positions carry no label: running the
vocabulary projection over the whole sequence (``[b, s, vocab]``, 128k wide for Llama-3) wastes
most of the head's FLOPs and memory. This loss gathers the hidden states that predict a label first.
"""

from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from medcap.data.transform import CROSS_ENTROPY_IGNORE_IDX


class LabelPositionCrossEntropy(nn.Module):
    """Sum of next-token cross-entropy over labelled positions, and their count.

    Args:
        ignore_index (int): label value meaning "not trained".
    """

    def __init__(self, ignore_index: int = CROSS_ENTROPY_IGNORE_IDX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self, hidden: torch.Tensor, labels: torch.Tensor, lm_head: Callable[[torch.Tensor], torch.Tensor]
    ) -> Tuple[torch.Tensor, int]:
        """Compute the summed loss.

        Args:
            hidden (torch.Tensor): ``[b, s, d]`` final hidden states.
            labels (torch.Tensor): ``[b, s]`` unshifted labels (position t predicts label t + 1).
            lm_head (Callable): ``[n, d] -> [n, vocab]``.

        Returns:
            Tuple[torch.Tensor, int]: the summed loss (divide by the token count for the mean) and
            the number of labelled tokens.
        """
        targets = labels[:, 1:]  # [b, s-1]
        keep = targets != self.ignore_index  # [b, s-1]
        logits = lm_head(hidden[:, :-1][keep]).float()  # [n, vocab], n = labelled positions
        num_tokens = int(keep.sum())
        return F.cross_entropy(logits, targets[keep], reduction="sum"), num_tokens
