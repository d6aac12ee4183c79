"""Callbacks that the tests put into a run through its YAML config."""

import os
import signal

import lightning as L
import torch


class SigtermAt(L.Callback):
    """Send this process SIGTERM after global step ``step``, as a cluster's pre-emption would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class NaNAt(L.Callback):
    """Poison the weights with NaN after global step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class SaveRankWeights(L.Callback):
    """Each process saves its final weights as ``rank<k>.pt`` in ``dirpath``."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_fit_end(self, trainer, pl_module):
        path = os.path.join(self.dirpath, f"rank{trainer.global_rank}.pt")
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, path)


class PartRankRNG(L.Callback):
    """Make each rank's random stream differ: rank ``k`` draws ``k + 1`` numbers at setup."""

    def setup(self, trainer, pl_module, stage):
        torch.rand(trainer.global_rank + 1)


class SaveRankRNG(L.Callback):
    """Each process saves its torch RNG state as fit starts (just after a DDP resume's restore)."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_fit_start(self, trainer, pl_module):
        path = os.path.join(self.dirpath, f"rng_rank{trainer.global_rank}.pt")
        torch.save(torch.get_rng_state(), path)


class NoisyBatch(L.Callback):
    """Add noise from the global torch RNG to every training batch, as dropout draws in a step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batch[0].add_(0.1 * torch.randn_like(batch[0]))


class SaveFirstBatchRNG(L.Callback):
    """Save the torch RNG state as the run's first training batch starts, in ``path``."""

    def __init__(self, path: str):
        self.path = path
        self.saved = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.saved:
            torch.save(torch.get_rng_state(), self.path)
            self.saved = True
