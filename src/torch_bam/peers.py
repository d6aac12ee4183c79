"""The attention modules users try instead of BAM, from timm's layers, placed as their papers do.

- SE: Hu, Shen and Sun, "Squeeze-and-Excitation Networks", CVPR 2018, arXiv:1709.01507.
- ECA: Wang et al., "ECA-Net: Efficient Channel Attention", CVPR 2020, arXiv:1910.03151.
- CBAM: Woo, Park, Lee and Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
  arXiv:1807.06521.

They are timm's modules (``timm.layers.create_attn``), not rewritten here. Their papers put one
in every residual block, on the residual branch before the shortcut is added: the ResNets of
:mod:`torch_bam.models` and timm's take ``block_args=dict(attn_layer=kind)`` for that. BAM's
paper puts one at each bottleneck. :func:`add_attention` places any of them in a built network
at the bottlenecks (the finder of :func:`~torch_bam.add_bam`), or after each stage of a network
without residual blocks, so that placement itself can be compared.

This module imports only torch; timm is imported when a peer is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .bam import BAM

__all__ = [
    "KINDS",
    "PEERS",
    "Variant",
    "add_attention",
    "added_cost",
    "attention_module",
    "attention_variants",
]

PEERS = ("se", "eca", "cbam")
KINDS = ("bam", *PEERS)
PLACEMENTS = ("bottleneck", "block")


def attention_module(kind: str, channels: int, **kwargs) -> nn.Module:
    """One attention module for a ``channels``-channel map: ``BAM(channels, **kwargs)`` for
    ``"bam"``, else timm's ``create_attn(kind, channels, **kwargs)``."""
    if kind == "bam":
        return BAM(channels, **kwargs)
    if kind not in PEERS:
        raise ValueError(f"unknown attention kind {kind!r}; use one of {', '.join(KINDS)}.")
    try:
        from timm.layers import create_attn
    except ImportError:
        raise ImportError(
            f"attention {kind!r} is timm's module: pip install timm (or torch-bam[timm])."
        ) from None
    return create_attn(kind, channels, **kwargs)


def _stage_ends(model: nn.Module) -> list[str]:
    """The modules that end each stage, from timm's ``feature_info`` (every model of
    :mod:`torch_bam.models` has it)."""
    info = getattr(model, "feature_info", None)
    paths = [i["module"] for i in info] if info else []
    if not paths:
        raise ValueError(
            f"add_attention(placement='block'): {type(model).__name__} lists no stages "
            f"(feature_info). Pass at=[module paths], or for a ResNet build it with "
            f"block_args=dict(attn_layer=kind), which puts the module inside every residual block."
        )
    return paths


def add_attention(
    model: nn.Module,
    kind: str,
    placement: str = "bottleneck",
    example_input: Tensor | None = None,
    *,
    at: list[str] | None = None,
    **kwargs,
) -> nn.Module:
    """Insert an attention module of ``kind`` into ``model`` in place; returns the model.

    Args:
        kind: ``"bam"``, ``"se"``, ``"eca"`` or ``"cbam"``.
        placement: ``"bottleneck"``: after each bottleneck :func:`~torch_bam.add_bam` finds
            (BAM's paper). ``"block"``: after every stage in ``model.feature_info`` (for a
            network without residual blocks; a ResNet takes the peers inside its blocks with
            ``block_args=dict(attn_layer=kind)`` when it is built).
        example_input: a batch the model accepts, for the finder.
        at: module paths to put the modules after, instead of the placement's.
        **kwargs: passed to each module (:func:`attention_module`).

    ``model.attention_report`` lists ``(path, channels)`` of every insertion.
    """
    from .insert import bottlenecks, insert_after

    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; use one of {', '.join(KINDS)}.")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; use 'bottleneck' or 'block'.")
    if at is not None:
        paths = list(at)
    elif placement == "bottleneck":
        paths = [p for p, _, _ in bottlenecks(model, example_input)]
    else:
        paths = _stage_ends(model)
    channels = _output_channels(model, paths, example_input)
    p = next(model.parameters(), None)
    if p is not None:
        kwargs.setdefault("device", p.device)
        kwargs.setdefault("dtype", p.dtype)
    report = []
    for path in paths:
        module = attention_module(kind, channels[path], **kwargs).train(model.training)
        report.append((insert_after(model, path, module, name=kind), channels[path]))
    model.attention_report = report
    return model


def _output_channels(model: nn.Module, paths: list[str], x: Tensor | None) -> dict[str, int]:
    """Channels of each module's output, from one forward pass (eval, no grad)."""
    from .insert._trace import default_input

    x = default_input(model) if x is None else x
    seen: dict[str, int] = {}
    handles = []
    for path in paths:
        module = model.get_submodule(path)  # a KeyError-like error names an unknown path

        def hook(_m, _inp, out, path=path):
            seen.setdefault(path, int(out.shape[1]))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: which attention, how it is built, where it goes."""

    name: str
    kind: str | None  # None: the backbone alone
    placement: str = "bottleneck"  # "bottleneck" (BAM's paper) or "block" (SE, ECA, CBAM)
    kwargs: dict = field(default_factory=dict)  # to the module (BAM's ablation switches)


def attention_variants() -> dict[str, Variant]:
    """The variants ``torch-bam compare`` knows, by name: the backbone alone, BAM and its
    paper's ablations at the bottlenecks, and SE, ECA, CBAM in every block."""
    variants = [
        Variant("none", None),
        Variant("bam", "bam"),
        Variant("se", "se", "block"),
        Variant("cbam", "cbam", "block"),
        Variant("eca", "eca", "block"),
        Variant("bam-channel", "bam", kwargs={"attention": "channel"}),
        Variant("bam-spatial", "bam", kwargs={"attention": "spatial"}),
        Variant("bam-max", "bam", kwargs={"combine": "max"}),
        Variant("bam-product", "bam", kwargs={"combine": "product"}),
        Variant("se-bottleneck", "se"),
        Variant("cbam-bottleneck", "cbam"),
        Variant("eca-bottleneck", "eca"),
    ]
    return {v.name: v for v in variants}


def added_cost(base: nn.Module, model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """Parameters and multiply-accumulates (:func:`torch_bam.flops.count_macs`) that ``model``
    adds to ``base``, for one batch of ``input_size``."""
    from .flops import count_macs, count_params

    return {
        "params": count_params(model) - count_params(base),
        "macs": count_macs(model, input_size) - count_macs(base, input_size),
    }
