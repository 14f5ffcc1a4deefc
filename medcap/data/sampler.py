"""A length-grouped sampler: shuffled batches of similar length, so less compute goes to padding.

Each epoch (seed + epoch) shuffles the indices, cuts them into mega-batches of
``mega_batch_mult * batch_size``, sorts each mega-batch by length and cuts it into batches, then
shuffles the order of the batches. Every sample is seen once per epoch, as with plain shuffling.
"""

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Yield indices so that consecutive ``batch_size`` chunks hold samples of similar length.

    Args:
        lengths (Sequence[int]): token count of every sample.
        batch_size (int): the loader's batch size.
        seed (int): base seed; the epoch is added (see :meth:`set_epoch`).
        mega_batch_mult (int): how many batches are sorted together.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 16):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.batch_size * self.mega_batch_mult
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start: start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for batch_index in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[batch_index]

    def __len__(self) -> int:
        return len(self.lengths)
