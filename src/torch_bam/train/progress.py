"""Progress for a log file: one plain line per epoch when stdout is not a terminal.

Lightning's bar redraws itself some thirty times a second; piped into a file (a cluster job's
log) that is thousands of lines. ``EpochLines`` prints one line per epoch and one per
evaluation instead. ``hide_tips`` drops Lightning's promotional "Tip" messages.
"""

from __future__ import annotations

import logging
import sys
import time

from lightning.pytorch.callbacks import ProgressBar

__all__ = ["EpochLines", "hide_tips"]


class EpochLines(ProgressBar):
    """``epoch 3/90: train/loss_epoch <loss>, val/top1_err <error> (<time> s)`` after each epoch.

    A metric logged both per step and per epoch (``<name>_step``, ``<name>_epoch``) is shown by
    its epoch value only: the line speaks for the epoch, not for its last step."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, head: str) -> None:
        if not (self._enabled and self.trainer.is_global_zero):
            return
        metrics = dict(self.get_metrics(self.trainer, self.trainer.lightning_module))
        metrics.pop("v_num", None)
        for name in [k for k in metrics if k.endswith("_step")]:
            if f"{name[: -len('_step')]}_epoch" in metrics:
                del metrics[name]
        values = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in sorted(metrics.items())
        )
        seconds = time.monotonic() - self._start
        line = f"{head}: {values}" if values else head
        print(f"{line} ({seconds:.1f} s)", flush=True)

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module):
        total = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        self._print(f"epoch {trainer.current_epoch + 1}/{total}")

    def on_validation_start(self, trainer, pl_module):
        # Only a `validate` run starts its own clock; validation inside fit is part of the
        # epoch (trainer.training is already False there, so it cannot tell the two apart).
        if trainer.state.fn == "validate":
            self._start = time.monotonic()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._print("validate")

    def on_test_start(self, trainer, pl_module):
        self._start = time.monotonic()

    def on_test_end(self, trainer, pl_module):
        self._print("test")


def hide_tips() -> None:
    """Drop Lightning's "Tip: try installing ..." messages (its rank-zero info logger)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in log.filters):
        log.addFilter(_NoTips())


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def wants_lines() -> bool:
    """Whether stdout is a file or pipe rather than a terminal."""
    return not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty())
