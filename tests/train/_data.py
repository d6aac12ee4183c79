"""A test-only data module whose training samples are randomly augmented."""

import random

import torch
from torch.utils.data import Dataset

from torch_bam.data.datamodules import ClutteredDigitsDataModule


class _Augmented(Dataset):
    """A random flip (Python ``random``) and additive noise (torch), drawn per sample."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        if random.random() < 0.5:
            x = x.flip(-1)
        return x + 0.1 * torch.randn_like(x), y


class AugmentedDigits(ClutteredDigitsDataModule):
    """Cluttered digits with a random augmentation of the training set."""

    def setup(self, stage=None):
        super().setup(stage)
        if not isinstance(self.train_set, _Augmented):
            self.train_set = _Augmented(self.train_set)
