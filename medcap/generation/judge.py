"""The LLM judge's model runtime: a text-only chat decoder replying to judge prompts.

The prompts and reply parsers are :mod:`medcap.metrics.judge` (pure); the resumable CSV loop
that feeds this model is :mod:`medcap.generation.judge_csv`; ``recipes/llm_judge.py`` builds
the model from a config and runs both.
"""

from typing import Any, List, Optional, Sequence

import torch
from torchtune.data import Message

from medcap.generation.decode import generate
from medcap.models.fusion import MedcapModel


class ChatJudge:
    """A chat decoder answering each judge prompt as one user turn.

    By default the reply is generated greedily and parsed afterwards. With
    ``score_candidates=True`` the reply is instead the allowed answer ("RIGHT"/"WRONG", or an
    option letter) to which the model gives the highest log-likelihood right after the assistant
    header: it always parses, which makes small models usable, but it is a different protocol
    from medcap's (the model never gets to say something else).

    Implements the ``Judge`` protocol of :mod:`medcap.generation.judge_csv`.

    Args:
        model (MedcapModel): a text-only model (:func:`medcap.models.text_only_model`), eval mode.
        tokenizer (Any): a torchtune chat tokenizer (``tokenize_messages``, ``encode``,
            ``decode``, ``stop_tokens``, ``pad_id``), e.g. Llama-3's or SmolLM2's ChatML tokenizer.
        max_new_tokens (int): longest reply in tokens (RIGHT/WRONG or a letter needs few).
        system_prompt (Optional[str]): an optional system turn before the user turn.
        score_candidates (bool): pick the likeliest allowed answer instead of generating.

    Attributes:
        max_seq_len (Optional[int]): the decoder's longest sequence (prompt + reply).
    """

    def __init__(self, model: MedcapModel, tokenizer: Any, max_new_tokens: int = 16, system_prompt: Optional[str] = None,
                 score_candidates: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.system_prompt = system_prompt
        self.score_candidates = score_candidates
        self.max_seq_len = getattr(model.decoder, "max_seq_len", None)

    def encode(self, prompt: str) -> List[int]:
        """Token ids of the chat prompt, ending with the assistant header."""
        messages = [Message(role="system", content=self.system_prompt)] if self.system_prompt else []
        messages += [Message(role="user", content=prompt), Message(role="assistant", content="")]
        tokens, _ = self.tokenizer.tokenize_messages(messages, add_end_tokens=False)
        return tokens

    def reply(self, prompts: Sequence[List[int]], candidates: Sequence[Sequence[str]]) -> List[str]:
        """Replies to a batch of encoded prompts.

        Args:
            prompts (Sequence[List[int]]): encoded prompts (:meth:`encode`).
            candidates (Sequence[Sequence[str]]): the allowed answers of each prompt (used only
                with ``score_candidates``).

        Returns:
            List[str]: one reply per prompt.
        """
        if self.score_candidates:
            return self.likeliest(prompts, candidates)
        generated = generate(
            self.model, prompts, pad_id=self.tokenizer.pad_id, stop_tokens=self.tokenizer.stop_tokens,
            max_new_tokens=self.max_new_tokens, temperature=0.0,
        )
        return [self.tokenizer.decode(ids) for ids in generated]

    @torch.inference_mode()
    def likeliest(self, prompts: Sequence[List[int]], candidates: Sequence[Sequence[str]]) -> List[str]:
        """The candidate with the highest summed token log-probability after each prompt.

        Every (prompt, candidate) pair is one right-padded sequence of a single causal forward:
        right padding never changes the logits of earlier positions. Ties go to the first
        candidate.
        """
        pairs = [(row, text, prompt + self.tokenizer.encode(text, add_bos=False, add_eos=False))
                 for row, (prompt, texts) in enumerate(zip(prompts, candidates)) for text in texts]
        device = self.model.decoder.tok_embeddings.weight.device
        longest = max(len(sequence) for _, _, sequence in pairs)
        tokens = torch.full((len(pairs), longest), self.tokenizer.pad_id, dtype=torch.long, device=device)  # [p, s]
        for index, (_, _, sequence) in enumerate(pairs):
            tokens[index, : len(sequence)] = torch.tensor(sequence, device=device)
        log_probs = torch.log_softmax(self.model.lm_head(self.model(tokens)), dim=-1)  # [p, s, vocab]
        best: List[Optional[str]] = [None] * len(prompts)
        best_score = [float("-inf")] * len(prompts)
        for index, (row, text, sequence) in enumerate(pairs):
            start = len(prompts[row])  # first candidate token, predicted at position start - 1
            targets = tokens[index, start: len(sequence)]  # [c]
            score = float(log_probs[index, start - 1: len(sequence) - 1].gather(-1, targets[:, None]).sum())
            if score > best_score[row]:
                best[row], best_score[row] = text, score
        return [text or "" for text in best]
