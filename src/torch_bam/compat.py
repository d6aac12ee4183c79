"""Load weights written by the official BAM code (github.com/Jongchan/attention-module) and by
pytorchcv (github.com/osmr/imgclsmob): the converters (:mod:`torch_bam._convert`) and
:func:`official_bam_resnet`, the official code's network built from torch_bam's.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ._convert import (
    check_official_layout,
    convert_official_state_dict,
    convert_pytorchcv_state_dict,
    load_official_bam,
    load_official_checkpoint,
    load_state_dict_strict,
)
from .errors import UsageError

__all__ = [
    "check_official_layout",
    "convert_official_state_dict",
    "convert_pytorchcv_state_dict",
    "load_official_bam",
    "load_official_checkpoint",
    "load_state_dict_strict",
    "official_bam_resnet",
]

_DATASETS = {"imagenet": ("imagenet", 1000), "cifar10": ("cifar", 10), "cifar100": ("cifar", 100)}


def official_bam_resnet(
    depth: int,
    num_classes: int | None = None,
    checkpoint: Mapping | None = None,
    dataset: str = "imagenet",
) -> nn.Module:
    """torch_bam's ``bam_resnet<depth>`` set up as the official code's ``ResidualNet``.

    That is: the stride in the 3x3 conv of a downsampling bottleneck (``stride_in_3x3=True``,
    the official code's layout, not the paper's v1) and ``combine="product"``. ``dataset`` is
    the official code's ``network_type``: ``"imagenet"`` (7x7 stem and max-pool; the adaptive
    average pool equals the official ``AvgPool2d(7)`` on 224x224 inputs) or ``"cifar10"`` /
    ``"cifar100"`` (3x3 stem, no max-pool; equal to its ``avg_pool2d(x, 4)`` on 32x32 inputs).
    ``num_classes`` defaults to the dataset's (1000, 10, 100). If ``checkpoint`` is given, it is
    loaded strictly with :func:`load_official_checkpoint`.
    """
    from .models import create_model

    if depth not in (18, 34, 50, 101, 152):
        raise UsageError(
            f"official_bam_resnet: depth must be 18, 34, 50, 101 or 152, got {depth!r}."
        )
    key = str(dataset).lower()
    if key not in _DATASETS:
        raise UsageError(
            f"official_bam_resnet: dataset must be 'imagenet', 'cifar10' or 'cifar100' (the "
            f"official code's network types), got {dataset!r}."
        )
    stem, classes = _DATASETS[key]
    model = create_model(
        f"bam_resnet{depth}",
        num_classes=classes if num_classes is None else num_classes,
        stride_in_3x3=True,
        combine="product",
        stem=stem,
    )
    if checkpoint is not None:
        load_official_checkpoint(model, checkpoint, strict=True)
    return model
