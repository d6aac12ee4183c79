"""One training run of a comparison, with Lightning: shared by ``demo`` and ``compare``.

Each run seeds everything first, then builds its network, so the same seed gives every variant
the same draw order for the backbone's weights and the same batches. The weights of the epoch
with the lowest validation error are kept (the test split is not seen here).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from torch import nn

__all__ = ["fit"]


@contextlib.contextmanager
def quiet_banner():
    """Lightning's hardware banner ("GPU available: ...") once per run is noise in a run that
    trains many models and says where in its report: keep its info lines out."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def fit(
    model: str | Callable[[], nn.Module],
    splits,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    progress: bool,
    trainer: dict | None = None,
):
    """Train one network; returns ``(network with best-val weights, Record)``.

    Args:
        model: a registered model name, or a function that builds the network (called after
            seeding).
        splits: :class:`.splits.Splits`.
        trainer: Lightning Trainer options (``accelerator``, ``devices``, ``strategy``, ...);
            default: one CPU.
    """
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from .._upstream_warnings import lightning_calls
    from ..train import ImageClassifier
    from ..train.progress import EpochLines, hide_tips, wants_lines
    from .callbacks import Record

    L.seed_everything(seed, verbose=False)  # same init draw order and same batches per seed
    module = ImageClassifier(
        model if isinstance(model, str) else model(),
        num_classes=splits.num_classes,
        in_chans=splits.in_chans,
        lr=lr,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=min(0.5, epochs / 4),
        max_epochs=epochs,
    )
    record = Record()
    callbacks = [record]
    if progress and wants_lines():
        callbacks.append(EpochLines())  # a log file or pipe: a line per epoch, not a bar
    hide_tips()
    train_loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(TensorDataset(splits.val_x, splits.val_y), batch_size=256)
    options = dict(accelerator="cpu", devices=1)
    options.update(trainer or {})
    with quiet_banner(), lightning_calls():
        t = L.Trainer(
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            callbacks=callbacks,
            **options,
        )
        t.fit(module, train_loader, val_loader)
    net = module.model
    if record.best_state is not None:
        net.load_state_dict(record.best_state)
        record.best_state = None
    return net.eval(), record
