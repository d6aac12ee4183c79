"""What the demo records while Lightning trains: curves, the best epoch, and step times."""

from __future__ import annotations

import copy
import time

import lightning as L

__all__ = ["Record"]


class Record(L.Callback):
    """Per epoch: mean training loss and validation top-1 error; per step: wall time.

    Keeps a copy of the weights of the epoch with the lowest validation error, so the model
    the demo tests is chosen on validation data only. ``step_seconds`` holds the wall time of
    every training step (forward, backward and optimizer step).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"train_loss": [], "val_top1_error": []}
        self.step_seconds: list[float] = []
        self.best_epoch: int | None = None
        self.best_val_error = float("inf")
        self.best_state: dict | None = None
        self._losses: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.step_seconds.append(time.perf_counter() - self._t0)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._losses.append(float(loss))

    def on_train_epoch_end(self, trainer, module):
        # Runs after the epoch's validation loop, so its error is in callback_metrics.
        self.history["train_loss"].append(sum(self._losses) / max(len(self._losses), 1))
        self._losses = []
        err = trainer.callback_metrics.get("val/top1_err")
        if err is None:
            return
        err = float(err)
        self.history["val_top1_error"].append(err)
        if err < self.best_val_error:
            self.best_val_error, self.best_epoch = err, trainer.current_epoch + 1
            self.best_state = copy.deepcopy(module.model.state_dict())
