"""The BAM gate as a function: ``x * (1 + sigmoid(c (+|*) s))``.

Park et al., "BAM: Bottleneck Attention Module", BMVC 2018, https://arxiv.org/abs/1807.06514
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_combine

__all__ = ["bam_gate", "bam_gate_ref"]


def bam_gate_ref(
    x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str = "sum"
) -> Tensor:
    """Reference maths of the BAM gate in plain PyTorch.

    Args:
        x: feature map ``[B, C, H, W]``.
        channel_logits: ``M_c``, ``[B, C]`` or ``[B, C, 1, 1]``.
        spatial_logits: ``M_s``, ``[B, 1, H, W]``.
        combine: ``"sum"`` (paper) or ``"product"`` (official code).

    Returns:
        ``x * (1 + sigmoid(M_c + M_s))`` (or with ``M_c * M_s``), shaped and laid out like ``x``.
    """
    c = channel_logits.reshape(x.shape[0], x.shape[1], 1, 1)
    logits = c * spatial_logits if combine == "product" else c + spatial_logits
    # x first: the output takes x's memory format. Bitwise equal to the seed's att * x + x.
    return x * torch.sigmoid(logits) + x


def bam_gate(
    x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str = "sum"
) -> Tensor:
    """Apply the BAM gate; see :func:`bam_gate_ref` for shapes."""
    if not torch.jit.is_scripting():
        check_combine(combine, "bam_gate")
    return bam_gate_ref(x, channel_logits, spatial_logits, combine)
