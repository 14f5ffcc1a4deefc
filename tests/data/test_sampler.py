"""Length-grouped batches: every sample once per epoch, less padding, seeded."""

from medcap.data import LengthGroupedSampler


def test_every_index_once_and_batches_grouped_by_length():
    lengths = [(i * 37) % 50 + 5 for i in range(96)]
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=8)
    order = list(sampler)
    assert sorted(order) == list(range(96)) and len(sampler) == 96
    batches = [order[i: i + 4] for i in range(0, 96, 4)]
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    plain = [list(range(96))[i: i + 4] for i in range(0, 96, 4)]
    padded_plain = sum(max(lengths[i] for i in b) * len(b) for b in plain)
    assert padded < 0.8 * padded_plain
    for batch in batches:  # sorted inside each mega-batch: lengths within a batch never increase
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_seeded_per_epoch():
    lengths = list(range(40))
    first = LengthGroupedSampler(lengths, batch_size=4, seed=0)
    again = LengthGroupedSampler(lengths, batch_size=4, seed=0)
    assert list(first) == list(again)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0 and sorted(first) == sorted(epoch0)
