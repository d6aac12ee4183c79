"""What a training run records while Lightning trains: curves, the best epoch, step times."""

from __future__ import annotations

import copy
import time

import lightning as L

__all__ = ["CURVES", "TRAIN_LOSS", "VAL_ERROR", "Record"]

# The curves each run records, by the names Lightning logs them under (and the console's
# epoch lines print): one name, one number, in the console, report.json and the plots.
TRAIN_LOSS = "train/loss_epoch"  # mean of the epoch's step losses
VAL_ERROR = "val/top1_err"  # top-1 error on the validation split, a fraction
CURVES = (TRAIN_LOSS, VAL_ERROR)


class Record(L.Callback):
    """Per epoch: mean training loss and validation top-1 error; per step: wall time.

    Keeps a copy of the weights of the epoch with the lowest validation error, so the model
    the engine tests is chosen on validation data only. ``step_seconds`` holds the wall time of
    every training step (forward, backward and optimizer step). ``history`` holds, per name of
    :data:`CURVES`, the value Lightning computed for each epoch: the very number the console's
    epoch line shows.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {name: [] for name in CURVES}
        self.step_seconds: list[float] = []
        self.best_epoch: int | None = None
        self.best_val_error = float("inf")
        self.best_state: dict | None = None
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.step_seconds.append(time.perf_counter() - self._t0)

    def on_train_epoch_end(self, trainer, module):
        # Runs after the epoch's validation loop and after Lightning reduced the epoch's
        # step losses, so both are in callback_metrics.
        metrics = trainer.callback_metrics
        for name in CURVES:
            if name in metrics:
                self.history[name].append(float(metrics[name]))
        err = metrics.get(VAL_ERROR)
        if err is None:
            return
        err = float(err)
        if err < self.best_val_error:
            self.best_val_error, self.best_epoch = err, trainer.current_epoch + 1
            self.best_state = copy.deepcopy(module.model.state_dict())
