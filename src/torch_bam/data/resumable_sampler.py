"""A shuffling sampler that a run can resume mid-epoch in exactly the same order, under DDP too."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = ["ResumableRandomSampler"]


class ResumableRandomSampler(DistributedSampler):
    """Each epoch's order is ``randperm(n)`` seeded by ``(seed, epoch)``, not the global RNG.

    Lightning calls ``set_epoch`` every epoch; ``skip(k)`` drops the first ``k`` indices of this
    process's next pass, for the samples it had already seen before the run was stopped.

    Under DDP (``num_replicas``/``rank`` given, or else read from ``torch.distributed`` when it is
    initialised) rank ``r`` of ``W`` takes ``order[r::W]`` of the epoch's order, after dropping
    its last ``n % W`` indices so every rank gets ``n // W``, as ``DistributedSampler`` does with
    ``drop_last=True``: no sample is seen twice in an epoch, and the training loader drops
    partial batches anyway. All ranks must share ``seed``. Being a ``DistributedSampler``, it is
    kept as it is by Lightning instead of wrapped in its own, so no ``use_distributed_sampler``
    flag is needed. One process takes the whole order, exactly as before DDP support.

    With ``with_epoch=True`` it yields ``(index, epoch)`` keys in the same order, for
    ``SeededSamples``, whose augmentation draws follow from the key.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        with_epoch: bool = False,
    ):
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        # The dataset is only measured: range(n) stands for it.
        super().__init__(
            range(num_samples),
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self._skip = 0
        self.with_epoch = with_epoch

    def skip(self, k: int) -> None:
        self._skip = k

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g)[: self.total_size]
        mine = order[self.rank :: self.num_replicas][self._skip :].tolist()
        self._skip = 0
        if self.with_epoch:
            # The epoch travels with each index: a persistent worker's dataset is a copy that
            # never sees set_epoch.
            return iter([(i, self.epoch) for i in mine])
        return iter(mine)

    def __len__(self) -> int:
        # This rank's full epoch: Lightning counts a resumed epoch's batches from where it stopped.
        return self.num_samples
