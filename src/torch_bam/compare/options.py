"""The options ``demo`` and ``compare`` share, checked before anything is read or written.

Every bad value ends in one :class:`~torch_bam.errors.UsageError` naming the option, the cause
and the fix; the ``torch-bam`` command prints it as one line and exits with status 2. Nothing
is created on disk before these checks pass.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from .._io import RunDirLock, check_output_dir
from ..errors import UsageError

DATASETS = "cluttered-digits, cifar10, cifar100 or imagefolder:PATH"


def check_extras(command: str) -> None:
    """Lightning and matplotlib, which every run needs, or one line naming the extras."""
    try:
        import lightning  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UsageError(
            f"{e.name} is not installed. {command} needs the train and viz extras: "
            f'pip install "torch-bam[train,viz]" (or pip install ".[train,viz]" in a clone).'
        ) from None


def check_positive(**values: int | float) -> None:
    """``--name`` must be positive, for each keyword (``train_size`` names ``--train-size``)."""
    for name, value in values.items():
        if value <= 0:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be positive, got {value}. Pass {flag} 1 or more.")


def check_dataset(dataset: str) -> None:
    if dataset in ("cluttered-digits", "cifar10", "cifar100"):
        return
    if dataset.startswith("imagefolder:") and dataset.split(":", 1)[1]:
        return
    raise UsageError(f"unknown --dataset {dataset!r}; use {DATASETS}.")


def check_out(out: str) -> list[str]:
    """``--out`` must be a directory, or a path where one can be created and written; returns
    the directories still to create, deepest first."""
    return check_output_dir(out, "--out")


# The options of a study that must be positive, in the order they are checked.
POSITIVE = ("epochs", "seeds", "train_size", "val_size", "test_size", "canvas", "batch_size")
POSITIVE += ("lr", "cost_turns")


def check_study(config: dict) -> None:
    """The checks of every option the demo and ``compare`` share, on the run's ``config``."""
    check_positive(**{k: config[k] for k in POSITIVE})
    if config["seed"] < 0:
        raise UsageError(f"--seed must be 0 or more, got {config['seed']}.")
    check_sizes(config["train_size"], config["batch_size"])
    check_dataset(config["dataset"])


def rank_zero() -> bool:
    """Whether this is the first process of a run (the only one, without DDP): Lightning's
    rank, read from the environment its launcher (or torchrun, or SLURM) sets."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def run_in(out: str, created: list[str], what: str, clear: Callable[[], None], run: Callable):
    """``clear()`` then ``run()`` while holding ``out``'s lock (a second run on it meanwhile is
    refused); if either fails, the directories this run created (``created``, from
    :func:`check_out`) are removed again, so no empty run directory is left behind. Under DDP
    only the first process does this; the others only ``run()``."""
    if not rank_zero():  # DDP: a process Lightning started again; rank 0 owns the directory
        return run()
    lock = RunDirLock(out, what=what)
    lock.acquire()
    try:
        clear()
        return run()
    except BaseException:
        lock.release()  # removes the lock file
        if created:
            with contextlib.suppress(OSError):
                for d in created:
                    os.rmdir(d)  # fails (and stops) at the first one that is not empty
        raise
    finally:
        lock.release()  # a second release does nothing


def check_sizes(train_size: int, batch_size: int) -> None:
    # Training drops the last incomplete batch (BatchNorm needs more than one image), so a
    # training split smaller than a batch would train nothing.
    if train_size < batch_size:
        raise UsageError(
            f"--train-size {train_size} is smaller than --batch-size {batch_size}: no full batch, "
            f"so nothing would be trained. Pass --train-size {batch_size} or more, or a smaller "
            f"--batch-size."
        )
    if batch_size < 2:
        raise UsageError(
            f"--batch-size {batch_size} is too small: BatchNorm needs at least 2 images per "
            f"batch. Pass --batch-size 2 or more."
        )
