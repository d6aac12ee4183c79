"""The networks of a comparison: the backbone with each variant's attention where it belongs."""

from __future__ import annotations

import torch
from torch import nn

from ..peers import Variant

__all__ = ["build_variant", "network_name"]


def network_name(backbone: str, variant: Variant) -> str | None:
    """The registered model a variant's network is (``small_cnn``, ``bam_small_cnn``), so a
    checkpoint of it can be loaded by name; ``None`` where the network is built otherwise."""
    from ..models import list_models

    if variant.kind is None:
        return backbone
    plain_bam = variant.kind == "bam" and variant.placement == "bottleneck" and not variant.kwargs
    if plain_bam and f"bam_{backbone}" in list_models():
        return f"bam_{backbone}"
    return None


def build_variant(backbone: str, variant: Variant, num_classes: int, in_chans: int, size: int):
    """The backbone with the variant's attention where its paper puts it (see
    :mod:`torch_bam.peers`): BAM at the bottlenecks (the registered ``bam_`` network where there
    is one), SE, ECA and CBAM in every residual block (``block_args``) or, in a network without
    residual blocks, after every stage."""
    from ..models import create_model, list_models
    from ..models.cifar import PreActResNet, ResNeXtCifar
    from ..models.resnet import ResNet
    from ..peers import add_attention

    kw = {"num_classes": num_classes}
    if in_chans != 3:
        kw["in_chans"] = in_chans
    example = torch.zeros(2, in_chans, size, size)
    if variant.kind is None:
        return create_model(backbone, **kw)
    if variant.kind == "bam" and variant.placement == "bottleneck":
        if f"bam_{backbone}" in list_models():
            return create_model(f"bam_{backbone}", **kw, **variant.kwargs)
    base: nn.Module = create_model(backbone, **kw)
    if variant.placement == "block" and isinstance(base, (ResNet, PreActResNet, ResNeXtCifar)):
        return create_model(backbone, **kw, block_args=dict(attn_layer=variant.kind))
    return add_attention(base, variant.kind, variant.placement, example, **variant.kwargs)
