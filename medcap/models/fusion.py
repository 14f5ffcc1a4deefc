"""Early fusion of image tokens into a frozen decoder (torchtune's ``EarlyFusionModel`` pattern).

The text carries one reserved placeholder id per image token. Its embedding is replaced by the
projected image features, in order, before the decoder layers run:

    tokens [b, s] ──► tok_embeddings (placeholders embedded as id 0) ──┐
    images [n, 3, h, w] ──► vision tower ──► projector [n, k, d] ──────┴─► scatter ──► layers ──► norm

What is torchtune's and what is ours: the decoder is an unmodified torchtune
``TransformerDecoder`` and keeps its own parts and API (``tok_embeddings``, ``layers``, ``norm``,
``output``, input validation, ``setup_caches`` / ``reset_caches`` for KV-cached decoding). As in
torchtune's ``EarlyFusionModel`` the image tokens are scattered into the token embeddings at the
placeholder positions (``masked_scatter``). Two things are ours: (1) the placeholder count is
checked against the images given, with a message naming both counts (torchtune scatters silently);
(2) :meth:`MedcapModel.forward` stops before the LM head and returns the final normalised hidden
states, so the loss applies the vocabulary projection only where a label exists (most positions
hold image tokens and the prompt: with Llama-3's 128k vocabulary the full head would be most of
the step's FLOPs and memory). ``TransformerDecoder.forward`` always applies the head to every
position, so the layer loop is run here with the decoder's own modules and checks.
"""

from typing import Optional

import torch
from torch import nn
from torchtune.modules import TransformerDecoder

from medcap.models.vision import VisionTower


class ImageEncoder(nn.Module):
    """Vision tower followed by a projector: images -> image tokens in decoder space.

    Args:
        vision_tower (VisionTower): the image tower.
        projector (nn.Module): maps ``[n, t, d_v]`` tower output to ``[n, k, d]``.

    Attributes:
        num_tokens (int): image tokens per image ``k``.
        out_dim (int): decoder embedding size ``d``.
    """

    def __init__(self, vision_tower: VisionTower, projector: nn.Module):
        super().__init__()
        if getattr(projector, "in_dim", vision_tower.out_dim) != vision_tower.out_dim:
            raise ValueError(
                f"projector in_dim={projector.in_dim} does not match the vision tower's output size "
                f"{vision_tower.out_dim} (output={vision_tower.output!r})"
            )
        self.vision_tower = vision_tower
        self.projector = projector
        self.num_tokens = getattr(projector, "num_tokens", None) or vision_tower.num_tokens
        self.out_dim = projector.out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args:
            images (torch.Tensor): ``[n, 3, h, w]``.

        Returns:
            torch.Tensor: ``[n, k, d]`` image tokens.
        """
        return self.projector(self.vision_tower(images))


class MedcapModel(nn.Module):
    """A decoder that reads image tokens at placeholder positions.

    Args:
        decoder (TransformerDecoder): the language model (frozen by the recipes).
        image_encoder (Optional[ImageEncoder]): vision tower + projector (trainable); None for a
            text-only model (e.g. an LLM judge), which then takes no images.
        image_token_id (int): the reserved placeholder id; may lie outside the decoder's vocabulary
            (as Llama-3's ``<|image|>`` = 128256 does), it is never embedded.
    """

    def __init__(self, decoder: TransformerDecoder, image_encoder: Optional[ImageEncoder], image_token_id: int):
        super().__init__()
        decoder_dim = decoder.tok_embeddings.embedding_dim
        if image_encoder is not None and image_encoder.out_dim != decoder_dim:
            raise ValueError(
                f"projector out_dim={image_encoder.out_dim} does not match the decoder's embedding size {decoder_dim}"
            )
        self.decoder = decoder
        self.image_encoder = image_encoder
        self.image_token_id = image_token_id

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens the text must hold per image."""
        return self.image_encoder.num_tokens if self.image_encoder is not None else 0

    def embed(self, tokens: torch.Tensor, images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings with image tokens scattered into the placeholder positions.

        Args:
            tokens (torch.Tensor): ``[b, s]`` ids, ``image_token_id`` at placeholders.
            images (Optional[torch.Tensor]): ``[n, 3, h, w]``, one per image in batch order.

        Returns:
            torch.Tensor: ``[b, s, d]``.

        Raises:
            ValueError: if the number of placeholders differs from ``n * num_image_tokens``.
        """
        is_placeholder = tokens == self.image_token_id  # [b, s]
        embeds = self.decoder.tok_embeddings(tokens.masked_fill(is_placeholder, 0))  # [b, s, d]
        num_placeholders = int(is_placeholder.sum())
        num_images = 0 if images is None else images.shape[0]
        expected = num_images * self.num_image_tokens
        if num_images and self.image_encoder is None:
            raise ValueError(f"this text-only model cannot take images ({num_images} given)")
        if num_placeholders != expected:
            per_row = is_placeholder.sum(dim=1).tolist()
            raise ValueError(
                f"image placeholder/embedding count mismatch: the tokens hold {num_placeholders} placeholders "
                f"(per sequence: {per_row}) but {num_images} images x {self.num_image_tokens} tokens "
                f"= {expected} image embeddings were given"
            )
        if num_images == 0:
            return embeds
        image_tokens = self.image_encoder(images).to(embeds.dtype)  # [n, k, d]
        return embeds.masked_scatter(is_placeholder.unsqueeze(-1), image_tokens)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        images: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        input_pos: Optional[torch.Tensor] = None,
        input_embeds: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Run the decoder and return final normalised hidden states (no LM head).

        Args:
            tokens (torch.Tensor): ``[b, s]``.
            images (Optional[torch.Tensor]): ``[n, 3, h, w]``.
            mask (Optional[torch.Tensor]): ``[b, s, s_kv]`` boolean attention mask (True = attend);
                None means causal.
            input_pos (Optional[torch.Tensor]): ``[b, s]`` positions (needed with a KV cache).
            input_embeds (Optional[torch.Tensor]): ``[b, s, d]`` precomputed :meth:`embed` output.

        Returns:
            torch.Tensor: ``[b, s, d]``.
        """
        hidden = self.embed(tokens, images) if input_embeds is None else input_embeds  # [b, s, d]
        self.decoder._validate_inputs(hidden.shape[1], mask=mask, input_pos=input_pos)  # length, KV-cache inputs
        for layer in self.decoder.layers:
            hidden = layer(hidden, mask=mask, input_pos=input_pos)
        return self.decoder.norm(hidden)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states: ``[..., d] -> [..., vocab]`` in fp32."""
        return self.decoder.output(hidden).float()
