"""Put BAM into any image CNN, at its bottlenecks (Park et al., BMVC 2018, Sec. 3).

A bottleneck is the end of a stage that is followed by a downsampling: ``add_bam`` puts a BAM
after each stage that is followed by one, none in the stem, none after the last stage. The
stages come from the model's own description where it has one (timm's ``feature_info``, the
children of torchvision's ``IntermediateLayerGetter``), else from one forward pass with hooks;
the stem is everything before the network's first block, by one rule for every model. See
``docs/adding-bam.md`` and the private modules: ``_bottlenecks`` (the rule), ``_stem``,
``_described``, ``_finder``, ``_trace``, ``_after`` (inserting with the keys unchanged).

For other attention blocks at the same places: :func:`bottlenecks` and :func:`insert_after`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validate import check_norm, check_positive_int
from ..bam import BAM
from ..norm import is_frozen_norm
from ._after import BAMAfter, insert_after, placement
from ._bottlenecks import Bottleneck, bottleneck_calls, bottlenecks, check_example_input
from ._trace import default_input, trace_calls

__all__ = [
    "BAMAfter",
    "BAMInsertion",
    "BAMReport",
    "Bottleneck",
    "add_bam",
    "bottlenecks",
    "insert_after",
]


@dataclass(frozen=True)
class BAMInsertion:
    """One BAM placed by :func:`add_bam`: after module ``path``, on ``channels`` x ``size``."""

    path: str
    channels: int
    size: tuple[int, int]  # (H, W) at the example input's size
    bam_path: str  # where the BAM lives in the model (its state_dict prefix)
    norm: str = "batch"  # the BAM's norm layers: "batch" or "frozen" (see add_bam's norm=)


class BAMReport(list):
    """The list of :class:`BAMInsertion` s, with a readable ``str``."""

    def __str__(self) -> str:
        rows = [f"{'after':<32} {'channels':>8}  size     norm"]
        rows += [
            f"{p.path:<32} {p.channels:>8}  {f'{p.size[0]}x{p.size[1]}':<8} {p.norm}" for p in self
        ]
        return "\n".join(rows)


@torch.no_grad()
def _identity_init_(bam: BAM, attention: float) -> None:
    """Zero the gates' last layers and set their biases so that sigmoid(...) = ``attention``."""
    logit = math.log(attention / (1 - attention))
    final_c = bam.channel_att.gate_c[-1] if bam.channel_att is not None else None
    final_s = bam.spatial_att.gate_s.gate_s_conv_final if bam.spatial_att is not None else None
    finals = [layer for layer in (final_c, final_s) if layer is not None]
    for layer in finals:
        layer.weight.zero_()
    if len(finals) == 1 or bam.combine == "max":  # one gate, or max: each gate at the logit
        for layer in finals:
            layer.bias.fill_(logit)
    elif bam.combine == "sum":
        final_c.bias.fill_(logit / 2)
        final_s.bias.fill_(logit / 2)
    else:  # product: (-a) * a = logit
        final_c.bias.fill_(-math.sqrt(-logit))
        final_s.bias.fill_(math.sqrt(-logit))


def _norms_of(module: nn.Module) -> list[nn.Module]:
    """The norm layers of ``module`` outside any BAM: BatchNorms and frozen BatchNorms."""
    inside_bam = {id(m) for b in module.modules() if isinstance(b, BAM) for m in b.modules()}
    return [
        m
        for m in module.modules()
        if id(m) not in inside_bam
        and (isinstance(m, nn.modules.batchnorm._BatchNorm) or is_frozen_norm(m))
    ]


def _follow_norm(model: nn.Module, module: nn.Module) -> str:
    """``"frozen"`` if the norms of the module BAM goes after (or, if it has none, of the
    model) are all frozen; else ``"batch"``."""
    norms = _norms_of(module) or _norms_of(model)
    return "frozen" if norms and all(is_frozen_norm(m) for m in norms) else "batch"


def add_bam(
    model: nn.Module,
    example_input: Tensor | None = None,
    *,
    at: Iterable[str] | None = None,
    identity_init: bool = False,
    init_attention: float = 1e-3,
    norm: str = "auto",
    **bam_kwargs,
) -> nn.Module:
    """Insert a BAM at each bottleneck of an image CNN, in place; return the model.

    Args:
        model: any ``nn.Module`` that takes an image batch ``[B, C, H, W]``.
        example_input: a batch the model accepts, used once (eval mode, no grad) to find the
            bottlenecks. Default: ``randn(2, C, 128, 128)`` with ``C`` the model's input
            channels (timm's ``pretrained_cfg``, else the first Conv2d's).
        at: module paths to put BAM after, instead of the found bottlenecks (e.g.
            ``["layer1", "layer2"]``).
        identity_init: start each BAM near identity, for fine-tuning a pretrained backbone:
            the gates' last layers get zero weights and biases such that the attention is
            ``init_attention`` everywhere, so ``F' = F * (1 + init_attention)``.
        init_attention: the starting attention with ``identity_init`` (small, but not so small
            that the sigmoid saturates and the gates cannot learn).
        norm: the BAMs' norm layers. ``"auto"``: follow the backbone, per BAM: ``"frozen"``
            where the norms of the module BAM goes after (or, if it has none, all of the
            model's) are frozen -- torchvision's or timm's ``FrozenBatchNorm2d``, or BatchNorms
            whose weight and bias have ``requires_grad=False`` -- else ``"batch"``.
            ``"batch"`` or ``"frozen"``: that for every BAM (see :class:`~torch_bam.BAM`).
            Frozen BAM norms keep their starting statistics (mean 0, variance 1), so training
            with one image per batch behaves as the frozen backbone does.
        **bam_kwargs: passed to every :class:`~torch_bam.BAM` (``reduction_ratio``,
            ``combine``, ...). ``device`` and ``dtype`` default to the model's.

    Returns:
        ``model``, changed in place, with ``model.bam_report``: a :class:`BAMReport` listing
        every insertion (module path, channels, (H, W) at the example input's size).

    Raises:
        ValueError: no Conv2d or the model fails on an image batch; no spatial downsampling;
            an unknown name in ``at`` (the error lists the valid ones), a name given twice, or
            a module that already has a BAM after it; too few channels for the reduction
            ratio.

    Examples:
        >>> model = add_bam(torchvision.models.resnet50())
        >>> [p.path for p in model.bam_report]
        ['layer1', 'layer2', 'layer3']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"add_bam expects an nn.Module, got {type(model).__name__}.")
    if not 0 < init_attention < 0.5:
        raise ValueError(f"add_bam: init_attention must be in (0, 0.5), got {init_attention}.")
    if norm != "auto":
        check_norm(norm, "add_bam")
    if example_input is None:
        example_input = default_input(model)
    check_example_input(example_input, "add_bam")
    existing = sum(isinstance(m, BAM) for m in model.modules())
    if existing and at is None:
        raise ValueError(
            f"add_bam: {type(model).__name__} already has {existing} BAM block(s); adding BAM at "
            f"the same bottlenecks again would stack them. Pass at=[module names] to add more."
        )
    if at is None:
        points = bottleneck_calls(model, example_input, "add_bam")
        if not points:
            raise ValueError(
                f"add_bam: found no bottleneck in {type(model).__name__}: no stage followed by "
                f"a spatial downsampling at input size {tuple(example_input.shape[2:])}. Pass "
                f"at=[module names] to place BAM by hand."
            )
    else:
        at = [at] if isinstance(at, str) else list(at)
        traced = trace_calls(model, example_input)
        calls = {c.path: c for c in traced if c.output is not None}
        unknown = [name for name in at if name not in calls]
        if unknown:
            raise ValueError(
                f"add_bam: no module {unknown} with a 4-D output in {type(model).__name__}. "
                f"Valid names: {', '.join(calls)}."
            )
        twice = sorted({name for name in at if at.count(name) > 1})
        if twice:
            raise ValueError(
                f"add_bam: at names {twice} more than once; that would stack BAMs on one map. "
                f"Name each module once."
            )
        runs = {name: sum(c.path == name for c in traced) for name in at}
        reused = [f"{name} runs {n} times in one forward" for name, n in runs.items() if n > 1]
        if reused:
            # As the automatic placement requires: a BAM after a module that runs more than
            # once would run at every call, on other maps, and its report would name one.
            raise ValueError(
                f"add_bam: {'; '.join(reused)} (one module object reused, as torchvision's "
                f"blocks reuse their relu), so a BAM after it would run at every call. Name a "
                f"module that runs once, such as the block that contains it."
            )
        points = [calls[name] for name in at]
    p = next(model.parameters(), None)
    if p is not None:
        bam_kwargs.setdefault("device", p.device)
        bam_kwargs.setdefault("dtype", p.dtype)
    r = check_positive_int("reduction_ratio", bam_kwargs.get("reduction_ratio", 16), "add_bam")
    too_small = [(c.path, c.output.shape[1]) for c in points if c.output.shape[1] // r < 1]
    if too_small:
        least = min(ch for _, ch in too_small)
        raise ValueError(
            f"add_bam: {too_small} (module, channels) have fewer channels than reduction_ratio="
            f"{r}, so BAM's bottleneck would be empty. Use reduction_ratio<={least}, or at= to "
            f"leave those points out."
        )
    for c in points:  # every check before the first change: all of the BAMs, or none
        try:
            placement(model, c.path, BAM)
        except ValueError as err:
            raise ValueError(f"add_bam: {err}") from None
    report = BAMReport()
    for c in points:
        channels, size = int(c.output.shape[1]), tuple(int(s) for s in c.output.shape[2:])
        bam_norm = _follow_norm(model, c.module) if norm == "auto" else norm
        bam = BAM(channels, norm=bam_norm, **bam_kwargs)
        if identity_init:
            _identity_init_(bam, init_attention)
        bam.train(model.training)
        bam_path = insert_after(model, c.path, bam)
        report.append(BAMInsertion(c.path, channels, size, bam_path, bam_norm))
    model.bam_report = report
    return model
