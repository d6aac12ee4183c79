"""The floor of a BAM network: the least that any implementation of its BAM blocks computes.

A BAM block's multiply-accumulates are almost all in its spatial gate's convolutions (the 1x1
reduce ``C -> C/r``, the dilated 3x3s, the final 1x1 to one map); the gate itself,
``F * (1 + sigmoid(M_c + M_s))``, is one pass over the feature map. :class:`BAMFloor` computes
exactly those: the block's convolutions with its own weights, each 1x1 as the fastest matrix
product for the input's layout, and one pass of the fused gate op (:func:`torch_bam.bam_gate`,
with zero channel logits). It leaves out the global pool, the channel MLP, the BatchNorms and
the ReLUs. It is a measuring stick, not a model: its outputs mean nothing.

:func:`bam_floor` returns a copy of a network with every BAM replaced by its floor. Timed in
turns beside the network without BAM and the network with BAM:

- floor / baseline is what BAM's arithmetic and its one gate pass cost;
- BAM network / floor is the overhead an implementation adds on top, the part that better code
  can remove.

    >>> from torch_bam import create_model
    >>> floor = bam_floor(create_model("bam_small_cnn"))
    >>> type(floor.bams[0]).__name__
    'BAMFloor'
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .bam import BAM
from .functional import bam_gate

__all__ = ["BAMFloor", "bam_floor"]


def _conv_1x1(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """A 1x1 conv as one matrix product over the channels, in the layout of ``x``."""
    if not x.is_contiguous() or conv.groups != 1 or conv.stride != (1, 1):
        return conv._conv_forward(x, conv.weight, conv.bias)  # channels_last: a fast conv
    b, c, h, w = x.shape
    k = conv.out_channels
    # [k, C] @ [B, C, HW] as one batched matmul on the NCHW data, no copy of x (torch.matmul
    # would fold the batch into a transposed, copied x).
    weight = conv.weight.reshape(k, c).to(x.dtype).expand(b, k, c)
    x3 = x.reshape(b, c, h * w)
    if conv.bias is None:
        y = torch.bmm(weight, x3)
    else:
        y = torch.baddbmm(conv.bias.to(x.dtype).reshape(1, k, 1), weight, x3)
    return y.reshape(b, k, h, w)


class BAMFloor(nn.Module):
    """A BAM block's convolutions and one gate pass, nothing else (see the module docstring).

    Args:
        block: the :class:`torch_bam.BAM` whose convolutions (and weights) to use; they are
            shared, not copied.
    """

    def __init__(self, block: BAM) -> None:
        super().__init__()
        if not isinstance(block, BAM):
            raise TypeError(f"BAMFloor needs a torch_bam.BAM block, got {type(block).__name__}.")
        if block.attention != "both":
            raise ValueError(
                f"BAMFloor is the floor of the paper's BAM (both gates); this block has "
                f"attention={block.attention!r}. Measure a one-gate BAM as it is."
            )
        convs = [m for m in block.spatial_att.gate_s if isinstance(m, nn.Conv2d)]
        self.convs = nn.ModuleList(convs)
        self.combine = block.combine

    def forward(self, x: Tensor) -> Tensor:
        s = x
        for conv in self.convs:
            if conv.kernel_size == (1, 1):
                s = _conv_1x1(s, conv)
            else:
                s = conv(s)
        zeros = s.new_zeros(x.shape[0], x.shape[1])
        return bam_gate(x, zeros, s.to(x.dtype), self.combine)


def bam_floor(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`torch_bam.BAM` replaced by its
    :class:`BAMFloor` (``model`` itself is left as it is). Raises a ValueError if ``model``
    has no BAM block."""
    if isinstance(model, BAM):
        return BAMFloor(copy.deepcopy(model))
    floor = copy.deepcopy(model)
    found = _replace(floor)
    if not found:
        raise ValueError(
            f"bam_floor: {type(model).__name__} has no torch_bam.BAM block; pass the BAM "
            "version of the network (e.g. create_model('bam_resnet50'))."
        )
    return floor


def _replace(module: nn.Module) -> int:
    found = 0
    for name, child in module.named_children():
        if isinstance(child, BAM):
            setattr(module, name, BAMFloor(child))
            found += 1
        else:
            found += _replace(child)
    return found
