"""BAM's CUDA kernels (contract version: plain ATen maths; Triton kernels follow)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "gate_backward_dx",
    "gate_backward_reduce",
    "gate_forward",
    "pool_reduce",
    "reduce_weight_grad",
    "supported",
]


def _fmt(x: Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _check(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be [B, C, H, W], got shape {list(x.shape)}.")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"{name}: x must be float16, bfloat16 or float32, got {x.dtype}.")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(
            f"{name}: x must be contiguous in NCHW or channels_last; call .contiguous() first."
        )


def _gate(x: Tensor, c: Tensor, s: Tensor, product: bool) -> Tensor:
    b, ch = x.shape[:2]
    c4 = c.reshape(b, ch, 1, 1).float()
    sf = s.float()
    return torch.sigmoid(c4 * sf if product else c4 + sf)


def supported(x: Tensor) -> bool:
    return (
        x.dim() == 4
        and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
    )


def gate_forward(x: Tensor, c: Tensor, s: Tensor, product: bool) -> Tensor:
    _check(x, "gate_forward")
    y = x.float() * (1 + _gate(x, c, s, product))
    return y.to(x.dtype).contiguous(memory_format=_fmt(x))


def gate_backward_reduce(dy: Tensor, x: Tensor, c: Tensor, s: Tensor, product: bool):
    _check(x, "gate_backward_reduce")
    b, ch = x.shape[:2]
    g = _gate(x, c, s, product)
    dl = dy.float() * x.float() * g * (1 - g)
    if product:
        dc = (dl * s.float()).sum((2, 3))
        ds = (dl * c.reshape(b, ch, 1, 1).float()).sum(1, keepdim=True)
    else:
        dc, ds = dl.sum((2, 3)), dl.sum(1, keepdim=True)
    return dc, ds.contiguous()


def gate_backward_dx(dy, c, s, product: bool, w_reduce=None, dr=None, dpool=None) -> Tensor:
    _check(dy, "gate_backward_dx")
    b, ch, h, w = dy.shape
    dx = dy.float() * (1 + _gate(dy, c, s, product))
    if dr is not None:
        wr = w_reduce.reshape(w_reduce.shape[0], ch).float()
        dx = dx + torch.einsum("kc,bkhw->bchw", wr, dr.float())
    if dpool is not None:
        dx = dx + dpool.float().reshape(b, ch, 1, 1) / (h * w)
    return dx.to(dy.dtype).contiguous(memory_format=_fmt(dy))


def pool_reduce(x: Tensor, w_reduce: Tensor, b_reduce: Tensor | None = None):
    _check(x, "pool_reduce")
    ch = x.shape[1]
    wr = w_reduce.reshape(w_reduce.shape[0], ch).float()
    pooled = x.float().mean((2, 3))
    r = torch.einsum("kc,bchw->bkhw", wr, x.float())
    if b_reduce is not None:
        r = r + b_reduce.float().reshape(1, -1, 1, 1)
    return pooled, r.to(x.dtype).contiguous(memory_format=torch.channels_last)


def reduce_weight_grad(x: Tensor, dr: Tensor) -> Tensor:
    _check(x, "reduce_weight_grad")
    return torch.einsum("bkhw,bchw->kc", dr.float(), x.float())
