"""The resumable sampler: one shuffled order per epoch, split over DDP ranks, skippable."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from torch_bam.data.resumable_sampler import ResumableRandomSampler


def _order(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def test_one_process_takes_the_whole_seeded_order_and_skips():
    s = ResumableRandomSampler(10, seed=3)
    assert (s.num_replicas, s.rank, len(s)) == (1, 0, 10)  # torch.distributed not initialised
    s.set_epoch(2)
    assert list(s) == _order(10, 3, 2).tolist()
    s.skip(4)
    assert list(s) == _order(10, 3, 2).tolist()[4:]
    assert list(s) == _order(10, 3, 2).tolist()  # a skip applies to the next pass only


@pytest.mark.parametrize("n, world", [(100, 3), (96, 2), (7, 4)])
def test_rank_shards_are_disjoint_and_cover_the_epoch_less_the_dropped_tail(n, world):
    shards = []
    for rank in range(world):
        s = ResumableRandomSampler(n, seed=1, num_replicas=world, rank=rank)
        s.set_epoch(5)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == n // world
    flat = [i for shard in shards for i in shard]
    assert len(set(flat)) == len(flat)  # no sample on two ranks
    # Together the ranks take the epoch's order but for its last n % world indices.
    assert sorted(flat) == sorted(_order(n, 1, 5)[: n // world * world].tolist())
    assert shards[1] == _order(n, 1, 5)[1::world][: n // world].tolist()


def test_skip_drops_what_each_rank_had_consumed():
    # 2 ranks, batches of 4, stopped after 3 batches: each rank goes on with its own 13th sample.
    for rank in (0, 1):
        s = ResumableRandomSampler(64, seed=0, num_replicas=2, rank=rank)
        s.set_epoch(1)
        full = list(s)
        s.skip(3 * 4)
        assert list(s) == full[12:]


def test_order_depends_on_epoch_and_seed_not_on_global_rng():
    def shard(seed, epoch):
        s = ResumableRandomSampler(50, seed=seed, num_replicas=2, rank=1)
        s.set_epoch(epoch)
        return list(s)

    torch.manual_seed(0)
    a = shard(0, 0)
    torch.manual_seed(1)
    assert shard(0, 0) == a
    assert shard(0, 1) != a
    assert shard(1, 0) != a


def test_is_a_distributed_sampler_so_lightning_does_not_wrap_it():
    # Lightning wraps a train sampler under DDP unless it is a DistributedSampler already.
    assert isinstance(ResumableRandomSampler(8), DistributedSampler)


def test_with_epoch_yields_the_same_order_keyed_by_epoch():
    s = ResumableRandomSampler(10, seed=3, with_epoch=True)
    s.set_epoch(2)
    assert list(s) == [(i, 2) for i in _order(10, 3, 2).tolist()]
    s.skip(4)
    assert list(s) == [(i, 2) for i in _order(10, 3, 2).tolist()[4:]]
