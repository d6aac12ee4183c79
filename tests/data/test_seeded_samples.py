"""Augmentation draws that follow from (seed, epoch, index), never from the global RNGs."""

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from torch_bam.data.seeded import SeededSamples, sample_seed


class _Noisy(Dataset):
    """Sample ``i``: a draw from each of torch, Python ``random`` and NumPy's global RNGs."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), random.random(), np.random.rand()])


def _global_states():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def _assert_same_states(a, b):
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and (a[2] == b[2]).all()


def test_same_key_same_sample_whatever_the_order_and_global_state():
    ds = SeededSamples(_Noisy(), seed=7)
    keys = [(i, e) for e in (0, 1) for i in range(16)]
    torch.manual_seed(0)
    first = {k: ds[k] for k in keys}
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    for k in reversed(keys):
        assert torch.equal(ds[k], first[k]), k
    assert torch.equal(SeededSamples(_Noisy(), seed=7)[(3, 1)], first[(3, 1)])


def test_epochs_indices_and_seeds_draw_differently():
    ds = SeededSamples(_Noisy(), seed=7)
    draws = {tuple(ds[(i, e)][1:].tolist()) for e in range(3) for i in range(16)}
    assert len(draws) == 48
    assert not torch.equal(SeededSamples(_Noisy(), seed=8)[(3, 1)], ds[(3, 1)])


def test_the_global_generators_are_left_as_they_were():
    ds = SeededSamples(_Noisy(), seed=7)
    before = _global_states()
    _ = ds[(5, 2)]
    _assert_same_states(_global_states(), before)


def test_workers_load_the_samples_the_main_process_would():
    ds = SeededSamples(_Noisy(), seed=7)
    keys = [(i, 3) for i in (9, 2, 14, 5, 0, 11)]
    loader = DataLoader(ds, sampler=keys, batch_size=2, num_workers=2)
    got = torch.cat(list(loader))
    assert torch.equal(got, torch.stack([ds[k] for k in keys]))


def test_sample_seeds_differ_in_the_low_32_bits_that_torch_keeps():
    # torch's CPU generator keeps only a seed's low 32 bits.
    low = {sample_seed(0, e, i) & 0xFFFF_FFFF for e in range(4) for i in range(2000)}
    assert len(low) == 8000


def test_iterating_a_training_loader_leaves_the_global_generators_alone():
    from tests.train._data import AugmentedDigits

    dm = AugmentedDigits(batch_size=8, num_train=32, num_val=8, canvas_size=24, scale=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    before = _global_states()
    epoch0 = [x for x, _ in loader]
    _assert_same_states(_global_states(), before)
    assert torch.equal(torch.cat([x for x, _ in loader]), torch.cat(epoch0))  # same epoch
    loader.sampler.set_epoch(1)
    assert not torch.equal(torch.cat([x for x, _ in loader]), torch.cat(epoch0))
