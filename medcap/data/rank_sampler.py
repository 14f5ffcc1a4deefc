"""Data-parallel sampling with the single-device batch semantics: each rank takes its slice of every global batch.

The order of one epoch is the single-device sampler's order for a batch of ``batch_size x
num_replicas`` (plain shuffle or length-grouped, :func:`medcap.data.build_sampler`). That order is
cut into global batches of ``batch_size x num_replicas`` samples and rank ``r`` takes samples
``r, r + R, r + 2R, ...`` of each (strided, so a length-sorted global batch gives every rank a similar
share of long and short samples)::

    single device, batch 4:  [a b c d] [e f g h] [i j]
    rank 0 of 2, batch 2:    [a c]     [e g]     [i]
    rank 1 of 2, batch 2:    [b d]     [f h]     [j]

So a step of R ranks sees exactly the samples of the single-device step with the R-times larger
batch, every sample once per epoch, none repeated (torch's ``DistributedSampler`` pads an uneven
dataset with repeats), and for plain shuffling with ``len(dataset) % R == 0`` the order is exactly
``DistributedSampler(num_replicas=R)``'s.
"""

from typing import Iterator, List

from torch.utils.data import Sampler


class RankSliceSampler(Sampler[int]):
    """The rank's strided slice of every global batch of a single-device sampler.

    Args:
        sampler (Sampler[int]): the single-device order for a batch of ``batch_size * num_replicas``
            (with ``set_epoch``).
        batch_size (int): per-rank batch size.
        num_replicas (int): data-parallel ranks ``R``.
        rank (int): this rank.

    Raises:
        ValueError: when the last global batch holds fewer samples than there are ranks, so some
            rank would have no data for the last step (all ranks must take the same steps).
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, num_replicas: int, rank: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        num_samples = len(sampler)
        global_batch = batch_size * num_replicas
        last = num_samples % global_batch
        if 0 < last < num_replicas:  # ranks last..R-1 would get nothing in the last step
            raise ValueError(
                f"{num_samples} samples in batches of batch_size={batch_size} x {num_replicas} ranks = {global_batch} leave "
                f"{last} sample(s) for the last step, so rank {last} and above would have no "
                f"data (every rank must take every step). Choose batch_size and the number of processes so that the "
                f"samples divide into batches of batch_size x processes, or leave at least one sample per rank in the "
                f"last one (e.g. batch_size={_suggest(num_samples, num_replicas)}), or use fewer processes"
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (as ``DistributedSampler.set_epoch``)."""
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order: List[int] = list(self.sampler)
        global_batch = self.batch_size * self.num_replicas
        for start in range(0, len(order), global_batch):
            yield from order[start: start + global_batch][self.rank:: self.num_replicas]

    def __len__(self) -> int:
        num_samples = len(self.sampler)
        global_batch = self.batch_size * self.num_replicas
        full, last = divmod(num_samples, global_batch)
        return full * self.batch_size + len(range(self.rank, last, self.num_replicas))


def _suggest(num_samples: int, num_replicas: int) -> int:
    """The largest per-rank batch size (up to 64) whose last global batch leaves every rank a sample."""
    for batch_size in range(min(64, max(num_samples // num_replicas, 1)), 0, -1):
        last = num_samples % (batch_size * num_replicas)
        if last == 0 or last >= num_replicas:
            return batch_size
    return 1
