"""Callbacks that make sure nothing is lost: a checkpoint on SIGTERM, and a final metrics JSON."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import torch

__all__ = ["MetricsJSON", "SaveOnSIGTERM"]


class SaveOnSIGTERM(L.Callback):
    """On SIGTERM (a scheduler's pre-emption, ``kill``), write ``last.ckpt`` and stop.

    The handler only sets a flag; the checkpoint is written after the current batch, at a step
    boundary, so resuming from it continues exactly.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self._requested = False
        self._previous = None

    def on_fit_start(self, trainer, pl_module):
        try:  # on every rank, and the flag is shared below so all ranks stop together
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None

    def _handle(self, signum, frame):
        self._requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        flag = torch.tensor(float(self._requested))
        flag = trainer.strategy.reduce(flag, reduce_op="max")
        if flag.item() > 0:
            trainer.save_checkpoint(self._path(trainer))
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _path(self, trainer) -> str:
        if self.dirpath:
            return os.path.join(self.dirpath, "last.ckpt")
        cb = trainer.checkpoint_callback
        d = cb.dirpath if cb is not None and cb.dirpath else trainer.default_root_dir
        return os.path.join(d, "last.ckpt")


class MetricsJSON(L.Callback):
    """Write ``metrics.json`` (every logged metric, per stage) in the run directory."""

    def __init__(self, path: str):
        self.path = Path(path)

    def _write(self, trainer, stage: str):
        if not trainer.is_global_zero:
            return
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        data[stage] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v)
        }
        data[stage]["epoch"] = trainer.current_epoch
        data[stage]["global_step"] = trainer.global_step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file

    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, "fit")

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":
            self._write(trainer, "validate")

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, "test")
