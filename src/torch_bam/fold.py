"""Fold BatchNorm into the conv or linear layer before it, for inference.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one conv with
rescaled weights and a new bias. Folding removes a pass over each gate's activations. The
folding maths is torch's own (``torch.nn.utils.fusion``); this module only finds the pairs.

It imports no BAM module (bam.py imports it): the gates declare their folding Sequential with
the :func:`folds` class decorator.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = ["fold_bam", "folds"]

# Module type -> the name of its Sequential whose (layer, BatchNorm) pairs fold_bam folds.
_FOLDABLE: dict[type, str] = {}


def folds(sequential: str):
    """Class decorator: ``fold_bam`` folds the pairs in this module's ``sequential`` child."""

    def register(cls):
        _FOLDABLE[cls] = sequential
        return cls

    return register

_FUSERS = (
    (nn.Conv2d, nn.BatchNorm2d, fuse_conv_bn_eval),
    (nn.Linear, nn.BatchNorm1d, fuse_linear_bn_eval),
)


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold each (Conv2d, BatchNorm2d) or (Linear, BatchNorm1d) pair of adjacent children."""
    names = list(seq._modules)
    folded = 0
    for first, second in zip(names, names[1:]):  # noqa: B905 (pairs of neighbours)
        layer, bn = seq._modules[first], seq._modules[second]
        for layer_type, bn_type, fuse in _FUSERS:
            if type(layer) is layer_type and type(bn) is bn_type and bn.track_running_stats:
                setattr(seq, first, fuse(layer, bn))
                setattr(seq, second, nn.Identity())  # keeps the Sequential's layout and names
                folded += 1
    return folded


def fold_bam(module: nn.Module, everywhere: bool = False) -> nn.Module:
    """Fold every BatchNorm of every BAM block in ``module`` into its conv/linear, in place.

    Args:
        module: a BAM block or any model containing BAM blocks, in eval mode.
        everywhere: also fold adjacent (Conv2d, BatchNorm2d) and (Linear, BatchNorm1d) children
            of every ``nn.Sequential`` in the model (e.g. ResNet downsample branches). Layers
            that are not children of a Sequential are left alone: their call order is not
            known without tracing (for those, see ``torch.fx.experimental.optimization.fuse``).

    Returns:
        ``module`` itself. The folded BAM blocks give the same outputs (to ~1e-6 in float32),
        stay scriptable and exportable, but their state_dicts no longer have BN entries: save
        the unfolded model for training.
    """
    if module.training:
        raise RuntimeError(
            "fold_bam folds BatchNorm's running statistics, which is only valid in eval mode. "
            "Call module.eval() first."
        )
    for m in module.modules():
        name = next((n for t, n in _FOLDABLE.items() if isinstance(m, t)), None)
        if name is not None:
            _fold_sequential(getattr(m, name))
        elif everywhere and isinstance(m, nn.Sequential):
            _fold_sequential(m)
    return module
