"""Projectors: map vision features into the decoder's embedding space as image tokens."""

from typing import Optional

import torch
from torch import nn


class MedcapProjector(nn.Module):
    """medcap's original projector: one pooled vector -> ``num_tokens`` image tokens.

    ``Linear(in_dim, hidden_dim) -> GELU -> Linear(hidden_dim, out_dim * num_tokens)``, reshaped to
    ``num_tokens`` tokens. With the defaults of medcap (512 -> 4096, 32 tokens) the last layer alone
    holds ~537M parameters.

    Args:
        in_dim (int): size of the pooled vision feature.
        out_dim (int): decoder embedding size.
        num_tokens (int): image tokens produced per image.
        hidden_dim (Optional[int]): hidden size; defaults to ``out_dim``.
    """

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int = 32, hidden_dim: Optional[int] = None):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.in_dim, self.out_dim, self.num_tokens = in_dim, out_dim, num_tokens
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim * num_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project pooled features.

        Args:
            features (torch.Tensor): ``[b, 1, in_dim]`` pooled features.

        Returns:
            torch.Tensor: ``[b, num_tokens, out_dim]``.
        """
        if features.shape[1] != 1:
            raise ValueError(
                f"MedcapProjector expects one pooled vector per image, got {features.shape[1]} tokens; "
                "use the vision tower's output='pooled' or the 'mlp' projector"
            )
        hidden = self.act(self.fc1(features[:, 0]))  # [b, hidden]
        return self.fc2(hidden).view(features.shape[0], self.num_tokens, self.out_dim)  # [b, n, d]


class MLPProjector(nn.Module):
    """LLaVA-1.5's projector: each vision token -> 2-layer GELU MLP -> decoder embedding size.

    Args:
        in_dim (int): vision feature size.
        out_dim (int): decoder embedding size.
        hidden_dim (Optional[int]): hidden size; defaults to ``out_dim``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: Optional[int] = None):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.in_dim, self.out_dim, self.num_tokens = in_dim, out_dim, None  # as many tokens as it is given
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project every token.

        Args:
            features (torch.Tensor): ``[b, n, in_dim]``.

        Returns:
            torch.Tensor: ``[b, n, out_dim]``.
        """
        return self.fc2(self.act(self.fc1(features)))


def medcap_projector(in_dim: int, out_dim: int, num_tokens: int = 32, hidden_dim: Optional[int] = None) -> MedcapProjector:
    """Component builder for :class:`MedcapProjector`."""
    return MedcapProjector(in_dim, out_dim, num_tokens=num_tokens, hidden_dim=hidden_dim)


def mlp_projector(in_dim: int, out_dim: int, hidden_dim: Optional[int] = None) -> MLPProjector:
    """Component builder for :class:`MLPProjector`."""
    return MLPProjector(in_dim, out_dim, hidden_dim=hidden_dim)
