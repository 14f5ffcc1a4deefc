"""Batched decoding with a KV cache for :class:`~medcap.models.MedcapModel`.

torchtune's ``generate`` cannot pass images, so this is a small loop of our own:

1. prompts are left-padded to one length ``L``; every row gets positions that start at 0 at its
   first real token and a mask that hides padding, so a row's result does not depend on its
   neighbours (batched output = unbatched output);
2. prefill: one forward over ``[b, L]`` with the images (the vision tower runs once);
3. one token per step from the cache; each row stops at its own stop token.

``use_cache=False`` recomputes the whole sequence every step (the reference the cache is tested
against; the image features of the prompt are still computed once).
"""

from contextlib import nullcontext
from typing import List, Optional, Sequence

import torch
from torchtune.modules.common_utils import local_kv_cache

from medcap.models.fusion import MedcapModel


def sample_next_token(
    logits: torch.Tensor, temperature: float = 0.0, top_k: Optional[int] = None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Pick the next token of each row.

    Args:
        logits (torch.Tensor): ``[b, vocab]``.
        temperature (float): 0 for greedy (argmax); otherwise softmax temperature.
        top_k (Optional[int]): sample only among the k most likely tokens.
        generator (Optional[torch.Generator]): RNG for sampling.

    Returns:
        torch.Tensor: ``[b]`` token ids.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [b, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: MedcapModel,
    prompts: Sequence[Sequence[int]],
    images: Optional[torch.Tensor] = None,
    *,
    pad_id: int,
    stop_tokens: Sequence[int],
    max_new_tokens: int = 200,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    use_cache: bool = True,
) -> List[List[int]]:
    """Generate a continuation for each prompt.

    Args:
        model (MedcapModel): the model (eval mode).
        prompts (Sequence[Sequence[int]]): token ids, image placeholders included.
        images (Optional[torch.Tensor]): ``[n, 3, h, w]``, one per image placeholder block, in order.
        pad_id (int): id used for left padding (never attended to).
        stop_tokens (Sequence[int]): a row stops after producing any of these.
        max_new_tokens (int): most tokens generated per row.
        temperature (float): 0 = greedy.
        top_k (Optional[int]): top-k sampling.
        generator (Optional[torch.Generator]): RNG for sampling.
        use_cache (bool): KV cache (fast) or full recomputation every step (reference).

    Returns:
        List[List[int]]: the generated ids of each row, without the stop token.
    """
    device = model.decoder.tok_embeddings.weight.device
    batch, prompt_len = len(prompts), max(len(p) for p in prompts)
    total_len = prompt_len + max_new_tokens
    tokens = torch.full((batch, total_len), pad_id, dtype=torch.long, device=device)  # [b, L + n]
    is_real = torch.zeros((batch, total_len), dtype=torch.bool, device=device)  # [b, L + n]
    for row, prompt in enumerate(prompts):
        tokens[row, prompt_len - len(prompt): prompt_len] = torch.tensor(prompt, device=device)
        is_real[row, prompt_len - len(prompt):] = True
    positions = (is_real.long().cumsum(dim=1) - 1).clamp(min=0)  # [b, L + n], 0 at each first real token
    causal = torch.tril(torch.ones(total_len, total_len, dtype=torch.bool, device=device))
    mask = causal[None] & is_real[:, None, :]  # [b, L + n, L + n]: attend to earlier real tokens
    mask |= torch.eye(total_len, dtype=torch.bool, device=device)[None]  # padding rows see themselves

    prompt_embeds = model.embed(tokens[:, :prompt_len], images)  # [b, L, d]: the vision tower runs once
    dtype = prompt_embeds.dtype
    stops = torch.tensor(list(stop_tokens), device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    steps = 0

    def next_token(hidden_last: torch.Tensor) -> torch.Tensor:
        return sample_next_token(model.lm_head(hidden_last), temperature, top_k, generator)  # [b]

    cache = local_kv_cache(model.decoder, batch_size=batch, device=device, dtype=dtype, decoder_max_seq_len=total_len) if use_cache else None
    with cache if cache is not None else nullcontext():
        hidden = model(tokens[:, :prompt_len], mask=mask[:, :prompt_len, :total_len if use_cache else prompt_len],
                       input_pos=positions[:, :prompt_len], input_embeds=prompt_embeds)  # [b, L, d]
        embeds = prompt_embeds
        while steps < max_new_tokens:
            current = prompt_len + steps
            token = next_token(hidden[:, -1])
            token = torch.where(done, torch.full_like(token, pad_id), token)
            tokens[:, current] = token
            done |= torch.isin(token, stops)
            steps += 1
            if bool(done.all()) or steps == max_new_tokens:
                break
            step_embeds = model.embed(token[:, None])  # [b, 1, d]
            if use_cache:
                hidden = model(token[:, None], mask=mask[:, current: current + 1], input_pos=positions[:, current: current + 1],
                               input_embeds=step_embeds)
            else:
                embeds = torch.cat([embeds, step_embeds], dim=1)  # [b, current + 1, d]
                hidden = model(tokens[:, : current + 1], mask=mask[:, : current + 1, : current + 1],
                               input_pos=positions[:, : current + 1], input_embeds=embeds)
    outputs = []
    for row in range(batch):
        generated = tokens[row, prompt_len: prompt_len + steps].tolist()
        stop_at = next((i for i, t in enumerate(generated) if t in set(stop_tokens)), len(generated))
        outputs.append(generated[:stop_at])
    return outputs

