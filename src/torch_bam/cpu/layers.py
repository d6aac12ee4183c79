"""The spatial gate's layers as they run fastest on CPU (benchmarks/RESULTS.md,
benchmarks/studies/RESULTS_narrow_gate.md).

The CPU room (:mod:`torch_bam.cpu.block`) calls these three functions for the spatial gate's
first and last layers and after each layer, for blocks whose layers are the plain ones BAM
builds; :class:`torch_bam.SpatialGate` itself only calls its layers. On other devices they do
what the plain layers do (``F.conv2d``, nothing): none of these tricks has been measured to
help on a GPU.
"""

# No `from __future__ import annotations`: TorchScript reads the real annotations.
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["final_1x1", "narrow_layout", "reduce_1x1"]


# PyTorch's CPU BatchNorm is several times slower on channels_last maps of fewer than 16
# channels than on NCHW ones, in training (batch statistics) above all
# (benchmarks/studies/RESULTS_narrow_gate.md). Gates this narrow compute their reduced map in NCHW,
# and in training keep their maps NCHW even in a channels_last model (whose conv weights would
# make conv outputs channels_last).
def narrow(width: int) -> bool:
    return width < 16  # a literal: TorchScript cannot read a module-level int


def narrow_layout(y: Tensor, training: bool) -> Tensor:
    """``y`` in NCHW if it is a narrow map in CPU training (see :func:`narrow`), else ``y``."""
    if training and y.device.type == "cpu" and y.dim() == 4 and narrow(y.shape[1]):
        return y.contiguous()  # a no-op when already NCHW
    return y


def _compiling() -> bool:
    # Under torch.compile the matmul forms are not measured to help, and inductor fails on the
    # reduce's with symbolic H, W: the plain conv there.
    return torch.compiler.is_compiling()


def reduce_1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:  # noqa: UP045 (TorchScript)
    """The 1x1 reduce conv ``C -> h``; on CPU a batched matmul on NCHW input, several times
    faster than the NCHW conv path. Same weights, same maths."""
    if (
        x.device.type != "cpu"
        or not x.is_contiguous()
        or x.dim() != 4
        or torch.jit.is_tracing()
        or _compiling()
    ):
        # Off CPU, channels_last (already a fast conv), odd strides, a trace, or torch.compile
        # (which plans its own kernels; with dynamic H, W inductor cannot order the batched
        # matmul's symbolic strides): the plain conv.
        return F.conv2d(x, weight, bias)
    b, c, h, w = x.shape
    hidden = weight.shape[0]
    if narrow(hidden):
        # [h, C] @ [B, C, HW] -> [B, h, HW]: the reduced map in NCHW layout.
        weight_b = weight.reshape(hidden, c).expand(b, hidden, c)
        x3 = x.reshape(b, c, h * w)
        if bias is None:
            y = torch.bmm(weight_b, x3)
        else:
            y = torch.baddbmm(bias.reshape(1, hidden, 1), weight_b, x3)
        return y.reshape(b, hidden, h, w)
    # NCHW: one batched matmul [B, HW, C] @ [C, h] -> [B, HW, h], which *is* the reduced map in
    # channels_last layout; the dilated 3x3 convs after it also run faster on channels_last.
    flat_t = x.reshape(b, c, h * w).transpose(1, 2)
    weight_t = weight.reshape(hidden, c).t().expand(b, c, hidden)
    if bias is None:
        y = torch.bmm(flat_t, weight_t)
    else:
        y = torch.baddbmm(bias.reshape(1, 1, hidden), flat_t, weight_t)
    return y.reshape(b, h, w, hidden).permute(0, 3, 1, 2)


def final_1x1(y: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:  # noqa: UP045 (TorchScript)
    """The final 1x1 conv from ``h`` channels to one; on CPU ``[1, h] @ [B, h, HW]`` (NCHW) or
    ``[B, HW, h] @ [h, 1]`` (channels_last, from 8 channels): about 2x faster than the conv,
    forward and backward (benchmarks/studies/RESULTS_narrow_gate.md)."""
    if y.device.type != "cpu" or y.dim() != 4 or torch.jit.is_tracing() or _compiling():
        return F.conv2d(y, weight, bias)
    b, h, hh, ww = y.shape
    w = weight.reshape(1, h)
    if y.is_contiguous():
        out = torch.matmul(w, y.reshape(b, h, hh * ww)).reshape(b, 1, hh, ww)
    elif h >= 8 and y.is_contiguous(memory_format=torch.channels_last):
        out = torch.matmul(y.permute(0, 2, 3, 1), w.t()).permute(0, 3, 1, 2)
    else:
        return F.conv2d(y, weight, bias)
    return out if bias is None else out + bias.reshape(1, 1, 1, 1)
