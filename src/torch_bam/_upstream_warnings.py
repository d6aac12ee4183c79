"""Warnings raised inside the libraries we call, about their own code, that we cannot fix.

Each filter is as narrow as it can be (message, category and the module that warns) and is on
only while we call that library, so the same warning from anyone else's code still shows.
"""

from __future__ import annotations

import contextlib
import warnings

__all__ = ["lightning_calls"]


@contextlib.contextmanager
def lightning_calls():
    """Around a call into Lightning: hide the deprecation that recent torch raises each time
    Lightning's own ``utilities/_pytree.py`` builds a ``LeafSpec`` (once per fit, validate or
    test, when it flattens the dataloaders). The user cannot act on it; Lightning has to."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
            module=r"lightning\.pytorch\.utilities\._pytree",
        )
        yield
