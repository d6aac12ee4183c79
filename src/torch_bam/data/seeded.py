"""Random augmentation as a function of (run seed, epoch, sample), not of the global RNGs."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import Dataset, get_worker_info

__all__ = ["SeededSamples", "sample_seed"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one sample of one epoch, well mixed in every bit.

    Mixed rather than packed (``seed << 40 | epoch << 32 | index``): torch's CPU generator
    keeps only the low 32 bits of a seed, so packed keys would share streams.
    """
    h = 0
    for v in (seed, epoch, index):
        h = _splitmix64(h ^ (v & _MASK64))
    return h


def _seed_all(seed: int) -> None:
    import numpy as np

    # Only the CPU generator: torch.manual_seed would also reseed the CUDA generators, which
    # dropout on a GPU draws from and fork_rng(devices=[]) does not restore.
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    if get_worker_info() is not None:
        # A worker's generators serve data loading alone, so seeding is enough; saving and
        # restoring NumPy's state (~0.1 ms) would cost as much as a small image's transform.
        _seed_all(seed)
        yield
        return
    import numpy as np

    py, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            _seed_all(seed)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


class SeededSamples(Dataset):
    """``samples[(index, epoch)]`` is ``dataset[index]`` drawn under RNGs seeded by
    ``(seed, epoch, index)``.

    A random transform inside ``dataset`` (crop, flip, noise; torch, Python ``random`` or NumPy)
    then draws the same numbers for a sample of an epoch wherever and whenever it is loaded: in
    the main process or any worker, prefetched early or not, in an uninterrupted run or after a
    mid-epoch resume. In the main process the global generators are saved before and restored
    after each sample, so data loading draws nothing from the stream that dropout and other
    noise in a training step use; a worker process only seeds its own.
    The key carries the epoch because a persistent worker's copy of this object never sees
    later changes to it (``ResumableRandomSampler(with_epoch=True)`` yields such keys).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        with _seeded_rngs(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]
