"""A length-grouped sampler: shuffled batches of similar length, so less compute goes to padding.

Each epoch (seed + epoch) shuffles the indices, cuts them into mega-batches of
``mega_batch_mult * batch_size``, sorts each mega-batch by length and cuts it into batches, then
shuffles the order of the batches. Every sample is seen once per epoch, as with plain shuffling.
"""

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler


class LengthGroupedSampler(Sampler[int]):
    """Yield indices so that consecutive ``batch_size`` chunks hold samples of similar length.

    Args:
        lengths (Sequence[int]): token count of every sample.
        batch_size (int): the loader's batch size.
        seed (int): base seed; the epoch is added (see :meth:`set_epoch`).
        mega_batch_mult (int): how many batches are sorted together.
        shuffle (bool): False keeps the file order (mega-batches in order, sorted inside): a
            deterministic order that still groups by length.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 16, shuffle: bool = True
    ):
        self.lengths = list(lengths)
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if not self.shuffle:  # file order, batches of similar length within each mega-batch, in order
            order = list(range(len(self.lengths)))
        else:
            order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.batch_size * self.mega_batch_mult
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start: start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        # a short batch (only the last one can be) stays last: in the middle it would shift every later
        # loader batch across two length groups
        full = len(batches) - (len(batches[-1]) < self.batch_size if batches else 0)
        batch_order = torch.randperm(full, generator=generator).tolist() if self.shuffle else list(range(full))
        for batch_index in batch_order + list(range(full, len(batches))):
            yield from batches[batch_index]

    def __len__(self) -> int:
        return len(self.lengths)


def build_sampler(
    dataset: Any, batch_size: int, *, shuffle: bool, group_by_length: bool, seed: int, num_replicas: int = 1, rank: int = 0
) -> Sampler[int]:
    """The training sampler of the recipes: plain (``DistributedSampler``) or length-grouped.

    Both honour ``shuffle``. With ``num_replicas > 1`` each rank gets its share of the samples.

    Args:
        dataset: a dataset with ``lengths`` (for ``group_by_length``).
        batch_size (int): per-rank batch size.
        shuffle (bool): shuffle every epoch (``seed + epoch``).
        group_by_length (bool): batches of similar length (less padding).
        seed (int): the run's seed.
        num_replicas (int): data-parallel ranks.
        rank (int): this rank.

    Returns:
        Sampler[int]: a sampler with ``set_epoch``.
    """
    if not group_by_length:
        return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
    if num_replicas != 1:
        raise NotImplementedError("group_by_length with several ranks: use group_by_length=False")
    return LengthGroupedSampler(dataset.lengths, batch_size, seed=seed, shuffle=shuffle)
