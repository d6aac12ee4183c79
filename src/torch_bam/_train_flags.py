"""Run a model in eval mode for a moment and hand every module back in the mode it had."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; afterwards each module gets its own ``training``
    flag back (a model-wide ``train(flag)`` would also flip the BatchNorms a user had put in
    eval to freeze their statistics)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training
