"""A shuffling sampler that a run can resume mid-epoch in exactly the same order."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableRandomSampler"]


class ResumableRandomSampler(Sampler[int]):
    """Each epoch's order is ``randperm(n)`` seeded by ``(seed, epoch)``, not the global RNG.

    Lightning calls ``set_epoch`` every epoch; ``skip(k)`` drops the first ``k`` indices of the
    next pass, for the samples a run had already seen before it was stopped.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed, self.epoch, self._skip = num_samples, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, k: int) -> None:
        self._skip = k

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g)[self._skip :].tolist()
        self._skip = 0
        return iter(order)

    def __len__(self) -> int:
        # The full epoch: Lightning counts the resumed epoch's batches from where it stopped.
        return self.num_samples
