"""Triton kernels for the BAM gate on CUDA: one pass forward, one pass backward.

Each program takes a [BLOCK_C, BLOCK_P] tile of one image, addressed through strides, so the
same kernel serves NCHW (pixel stride 1) and channels_last (channel stride 1). Maths runs in
float32 whatever the storage dtype. Backward recomputes the sigmoid and reduces the tile's
``dl`` over pixels (-> dc) and over channels (-> ds) with float32 atomics.

Imported only when a CUDA tensor reaches bam_gate (or by the interpreter test, which sets
``TRITON_INTERPRET=1`` before import to run these kernels on CPU).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is optional
    triton = None

BLOCK_C, BLOCK_P = 32, 64


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _gate(cv, sv, PRODUCT: tl.constexpr):
        logits = cv[:, None] * sv[None, :] if PRODUCT else cv[:, None] + sv[None, :]
        return tl.sigmoid(logits)

    @triton.jit
    def _fwd_kernel(
        x_ptr, c_ptr, s_ptr, y_ptr, C, HW, stride_b, stride_c, stride_p,
        PRODUCT: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        oc = tl.program_id(1) * BC + tl.arange(0, BC)
        op = tl.program_id(2) * BP + tl.arange(0, BP)
        mc, mp = oc < C, op < HW
        mask = mc[:, None] & mp[None, :]
        off = b * stride_b + oc[:, None] * stride_c + op[None, :] * stride_p
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        cv = tl.load(c_ptr + b * C + oc, mask=mc, other=0.0).to(tl.float32)
        sv = tl.load(s_ptr + b * HW + op, mask=mp, other=0.0).to(tl.float32)
        y = x * (1.0 + _gate(cv, sv, PRODUCT))
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_kernel(
        dy_ptr, x_ptr, c_ptr, s_ptr, dx_ptr, dc_ptr, ds_ptr, C, HW, stride_b, stride_c,
        stride_p, PRODUCT: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        oc = tl.program_id(1) * BC + tl.arange(0, BC)
        op = tl.program_id(2) * BP + tl.arange(0, BP)
        mc, mp = oc < C, op < HW
        mask = mc[:, None] & mp[None, :]
        off = b * stride_b + oc[:, None] * stride_c + op[None, :] * stride_p
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        cv = tl.load(c_ptr + b * C + oc, mask=mc, other=0.0).to(tl.float32)
        sv = tl.load(s_ptr + b * HW + op, mask=mp, other=0.0).to(tl.float32)
        g = _gate(cv, sv, PRODUCT)
        tl.store(dx_ptr + off, (dy * (1.0 + g)).to(dx_ptr.dtype.element_ty), mask=mask)
        dl = dy * x * g * (1.0 - g)  # masked lanes have x = dy = 0, so dl = 0
        if PRODUCT:
            dc = tl.sum(dl * sv[None, :], axis=1)
            ds = tl.sum(dl * cv[:, None], axis=0)
        else:
            dc = tl.sum(dl, axis=1)
            ds = tl.sum(dl, axis=0)
        tl.atomic_add(dc_ptr + b * C + oc, dc, mask=mc)
        tl.atomic_add(ds_ptr + b * HW + op, ds, mask=mp)


def _layout(x: torch.Tensor):
    b, ch, h, w = x.shape
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x, (x.stride(0), 1, ch)
    x = x.contiguous()
    return x, (ch * h * w, h * w, 1)


def _grid(b: int, ch: int, hw: int):
    return (b, triton.cdiv(ch, BLOCK_C), triton.cdiv(hw, BLOCK_P))


def forward(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool) -> torch.Tensor:
    x, strides = _layout(x)
    b, ch, h, w = x.shape
    y = torch.empty_like(x)
    c = c.reshape(b, ch).contiguous()
    s = s.reshape(b, h * w).contiguous()
    _fwd_kernel[_grid(b, ch, h * w)](
        x, c, s, y, ch, h * w, *strides, PRODUCT=product, BC=BLOCK_C, BP=BLOCK_P
    )
    return y


def backward(dy: torch.Tensor, x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, product: bool):
    x, strides = _layout(x)
    fmt = torch.channels_last if strides[1] == 1 and x.shape[1] > 1 else torch.contiguous_format
    dy = dy.contiguous(memory_format=fmt)
    if dy.stride() != x.stride():  # degenerate sizes: make both plain contiguous
        x, strides = x.contiguous(), _layout(x.contiguous())[1]
        dy = dy.contiguous()
    b, ch, h, w = x.shape
    c = c.reshape(b, ch).contiguous()
    s = s.reshape(b, h * w).contiguous()
    dx = torch.empty_like(x)
    dc = torch.zeros(b, ch, device=x.device, dtype=torch.float32)
    ds = torch.zeros(b, h * w, device=x.device, dtype=torch.float32)
    _bwd_kernel[_grid(b, ch, h * w)](
        dy, x, c, s, dx, dc, ds, ch, h * w, *strides, PRODUCT=product, BC=BLOCK_C, BP=BLOCK_P
    )
    return dx, dc, ds.view(b, 1, h, w)
