"""The BAM gate as a function: ``x * (1 + sigmoid(c (+|max|*) s))``.

Park et al., "BAM: Bottleneck Attention Module", BMVC 2018, https://arxiv.org/abs/1807.06514

:func:`bam_gate_ref` is the reference maths in plain PyTorch. :func:`bam_gate` is the public op:
one ``torch.ops.torch_bam.bam_gate`` node, registered with ``torch.library``. This file holds
what every device shares: the three ops' schemas (the gate, its backward, the in-place gate),
their fake implementations, the autograd formula, and the ATen composition (float32 maths) that
is each op's default kernel. The fused kernels are registered per device by their rooms --
``torch_bam.cpu.gate`` (C, float32) for "cpu", ``torch_bam.cuda.gate`` (Triton) for "cuda" --
and torch's dispatcher picks them by the tensors' device; each reads :func:`get_backend` to
honour :func:`set_backend`. The backward recomputes the sigmoid, so autograd keeps only ``x``,
``c`` and ``s``; with ``create_graph=True`` it runs the same maths in ATen ops, so double
backward works too. Under ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``), whose
wrapped tensors a ``torch.library`` autograd formula cannot take, :func:`bam_gate` computes the
ATen maths as plain differentiable ops.

The paper's ablation ``combine="max"`` runs as plain differentiable ops (:func:`bam_gate_ref`)
on every device: the op and its kernels compute ``"sum"`` and ``"product"`` only.

``set_backend("reference")`` or the environment variable ``TORCH_BAM_FORCE_REFERENCE=1`` make
:func:`bam_gate` call :func:`bam_gate_ref` instead, for debugging.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from ._validate import check_combine

__all__ = ["bam_gate", "bam_gate_ref", "get_backend", "set_backend"]

_BACKENDS = ("auto", "reference", "aten", "triton")
_OP_COMBINE = ("sum", "product")
_backend: str | None = None  # None: TORCH_BAM_BACKEND, else "auto"


def set_backend(name: str) -> None:
    """Choose how BAM blocks and :func:`bam_gate` run.

    ``"auto"`` (default): on CPU the CPU room (C kernel, memory-saving autograd); on CUDA the
    plain path (cuDNN layers and the ATen gate), unless the GPU's class is one on which
    ``benchmarks/gpu.py`` measured the Triton path correct and faster
    (``torch_bam/cuda/verified.json``, empty until such a run). ``"triton"``: the Triton path
    (:mod:`torch_bam.cuda`) wherever it can run -- an NVIDIA GPU of compute capability 8.0 to
    9.0 with a tested triton, or CPU tensors under the Triton interpreter
    (``TRITON_INTERPRET=1`` set before triton is imported, as CI runs it); elsewhere the first
    block or gate raises one line that names the reason and the fix. ``"aten"``: the
    registered op, but always with the ATen composition; ``"reference"``: plain
    :func:`bam_gate_ref` (no custom op).

    Without a call, the environment variable ``TORCH_BAM_BACKEND`` (one of these names) gives
    the backend. ``TORCH_BAM_FORCE_REFERENCE=1`` overrides both.
    """
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"set_backend: unknown backend {name!r}. Use one of {_BACKENDS}.")
    if name == "triton" and importlib.util.find_spec("triton") is None:
        raise RuntimeError(
            "set_backend('triton'): triton is not installed. Install it (pip install triton)."
        )
    _backend = name


def get_backend() -> str:
    if os.environ.get("TORCH_BAM_FORCE_REFERENCE", "") not in ("", "0"):
        return "reference"
    if _backend is not None:
        return _backend
    name = os.environ.get("TORCH_BAM_BACKEND", "") or "auto"
    if name not in _BACKENDS:
        raise ValueError(
            f"TORCH_BAM_BACKEND={name!r} is not a backend: set it to one of {_BACKENDS}, or "
            "unset it."
        )
    return name


def bam_gate_ref(
    x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str = "sum"
) -> Tensor:
    """Reference maths of the BAM gate in plain PyTorch.

    Args:
        x: feature map ``[B, C, H, W]``.
        channel_logits: ``M_c``, ``[B, C]`` or ``[B, C, 1, 1]``.
        spatial_logits: ``M_s``, ``[B, 1, H, W]``.
        combine: ``"sum"`` (paper), ``"max"`` (the paper's ablation: ``max(M_c, M_s)``) or
            ``"product"`` (official code).

    Returns:
        ``x * (1 + sigmoid(M_c + M_s))`` (or with ``max(M_c, M_s)``, ``M_c * M_s``), shaped and
        laid out like ``x``.
    """
    c = channel_logits.reshape(x.shape[0], x.shape[1], 1, 1)
    if combine == "product":
        logits = c * spatial_logits
    elif combine == "max":
        logits = torch.maximum(c, spatial_logits)
    else:
        logits = c + spatial_logits
    # x first: the output takes x's memory format. Bitwise equal to the seed's att * x + x.
    return x * torch.sigmoid(logits) + x


# ---------------------------------------------------------------------------------------------
# The registered op


def _check_shapes(x: Tensor, c: Tensor, s: Tensor, combine: str) -> None:
    if combine not in _OP_COMBINE:  # the op's kernels compute these two only
        raise ValueError(
            f"torch_bam::bam_gate: combine={combine!r} is not one of the op's {_OP_COMBINE}. "
            f"Call torch_bam.functional.bam_gate, which computes every combine (including the "
            f"ablation 'max', as plain ops)."
        )
    if x.dim() != 4:
        raise ValueError(f"bam_gate: x must be [B, C, H, W], got shape {list(x.shape)}.")
    b, ch, h, w = x.shape
    if tuple(c.shape) not in ((b, ch), (b, ch, 1, 1)):
        raise ValueError(
            f"bam_gate: channel_logits must be [B, C] = {[b, ch]} (or [B, C, 1, 1]) for x of "
            f"shape {list(x.shape)}, got {list(c.shape)}."
        )
    if tuple(s.shape) != (b, 1, h, w):
        raise ValueError(
            f"bam_gate: spatial_logits must be [B, 1, H, W] = {[b, 1, h, w]} for x of shape "
            f"{list(x.shape)}, got {list(s.shape)}."
        )
    if not (x.is_floating_point() and c.is_floating_point() and s.is_floating_point()):
        raise TypeError(
            f"bam_gate: x, channel_logits and spatial_logits must be floating point, "
            f"got {x.dtype}, {c.dtype}, {s.dtype}. Convert them with .to(x.dtype)."
        )


def _common(x: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # Mixed dtypes (e.g. autocast: float32 x, float16 logits) promote like the reference.
    dt = torch.promote_types(torch.promote_types(x.dtype, c.dtype), s.dtype)
    return x.to(dt), c.to(dt), s.to(dt)


def _out_format(x: Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _opmath(t: Tensor) -> Tensor:
    # float32 maths for float16/bfloat16 (one rounding at the end); float64 stays float64.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _forward_aten(x: Tensor, c: Tensor, s: Tensor, combine: str) -> Tensor:
    xf = _opmath(x)
    c4 = _opmath(c.reshape(x.shape[0], x.shape[1], 1, 1))
    sf = _opmath(s)
    logits = c4 * sf if combine == "product" else c4 + sf
    return (xf * torch.sigmoid(logits) + xf).to(x.dtype)


def _backward_aten(dy: Tensor, x: Tensor, c: Tensor, s: Tensor, combine: str):
    xf, dyf = _opmath(x), _opmath(dy)
    c4 = _opmath(c.reshape(x.shape[0], x.shape[1], 1, 1))
    sf = _opmath(s)
    g = torch.sigmoid(c4 * sf if combine == "product" else c4 + sf)
    dx = dyf * (1 + g)
    dl = dyf * xf * g * (1 - g)
    if combine == "product":
        dc, ds = (dl * sf).sum((2, 3)), (dl * c4).sum(1, keepdim=True)
    else:
        dc, ds = dl.sum((2, 3)), dl.sum(1, keepdim=True)
    return dx, dc, ds


def gate_operands(x: Tensor, c: Tensor, s: Tensor, combine: str):
    """What every kernel of the op starts with: the checks, then ``(x, c, s, fmt)`` promoted to
    one dtype, with ``fmt`` the output's memory format (x's)."""
    _check_shapes(x, c, s, combine)
    fmt = _out_format(x)
    return (*_common(x, c, s), fmt)


def gate_grads(x: Tensor, c: Tensor, s: Tensor, dx: Tensor, dc: Tensor, ds: Tensor):
    """What every backward kernel ends with: the grads in their inputs' dtypes and shapes."""
    return (
        dx.to(x.dtype).contiguous(memory_format=_out_format(x)),
        dc.to(c.dtype).reshape(c.shape).contiguous(),
        ds.to(s.dtype).reshape(s.shape).contiguous(),
    )


# The ops. Each one's default kernel (every device) is the ATen composition; cpu/gate.py and
# cuda/gate.py register the fused kernels for their devices, which fall back to these.


def gate_forward_aten(x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str):
    x, channel_logits, spatial_logits, fmt = gate_operands(
        x, channel_logits, spatial_logits, combine
    )
    return _forward_aten(x, channel_logits, spatial_logits, combine).contiguous(memory_format=fmt)


def gate_backward_aten(grad: Tensor, x: Tensor, c: Tensor, s: Tensor, combine: str):
    dx, dc, ds = _backward_aten(grad, *_common(x, c, s), combine)
    return gate_grads(x, c, s, dx, dc, ds)


@torch.library.custom_op("torch_bam::bam_gate", mutates_args=())
def bam_gate_op(x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str) -> Tensor:
    return gate_forward_aten(x, channel_logits, spatial_logits, combine)


@bam_gate_op.register_fake
def _(x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str) -> Tensor:
    _check_shapes(x, channel_logits, spatial_logits, combine)
    dt = torch.promote_types(
        torch.promote_types(x.dtype, channel_logits.dtype), spatial_logits.dtype
    )
    return torch.empty_like(x, dtype=dt, memory_format=_out_format(x))


@torch.library.custom_op("torch_bam::bam_gate_backward", mutates_args=())
def bam_gate_backward_op(
    grad: Tensor, x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str
) -> tuple[Tensor, Tensor, Tensor]:
    return gate_backward_aten(grad, x, channel_logits, spatial_logits, combine)


@bam_gate_backward_op.register_fake
def _(grad: Tensor, x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str):
    return (
        torch.empty_like(x, memory_format=_out_format(x)),
        torch.empty_like(channel_logits, memory_format=torch.contiguous_format),
        torch.empty_like(spatial_logits, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, c, s, combine = inputs
    ctx.save_for_backward(x, c, s)  # x, c, s only: the sigmoid is recomputed in backward
    ctx.combine = combine


def _backward(ctx, grad: Tensor):
    x, c, s = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True (double backward: hvp, gradient penalties): the same maths in
        # differentiable ATen ops, so autograd can go on through them. Grad mode is off here
        # in an ordinary backward, which keeps the fused kernel.
        xx, cc, ss = _common(x, c, s)
        dx, dc, ds = _backward_aten(grad, xx, cc, ss, ctx.combine)
        return (
            dx.to(x.dtype),
            dc.to(c.dtype).reshape(c.shape),
            ds.to(s.dtype).reshape(s.shape),
            None,
        )
    dx, dc, ds = bam_gate_backward_op(grad, x, c, s, ctx.combine)
    return dx, dc, ds, None


bam_gate_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("torch_bam::bam_gate_", mutates_args=("x",))
def bam_gate_inplace_op(
    x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str
) -> None:
    x.copy_(bam_gate_op(x, channel_logits, spatial_logits, combine))


def _functorch_wrapped(*ts: Tensor) -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...) sees one of these tensors: the
    op's autograd (a torch.library registration) does not support those transforms."""
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        return False
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts)


def bam_gate(
    x: Tensor,
    channel_logits: Tensor,
    spatial_logits: Tensor,
    combine: str = "sum",
    inplace: bool = False,
) -> Tensor:
    """Apply the BAM gate ``x * (1 + sigmoid(c (+|max|*) s))``; see :func:`bam_gate_ref`.

    ``combine="max"`` (an ablation of the paper) computes :func:`bam_gate_ref` as plain
    differentiable ops on every backend; ``"sum"`` and ``"product"`` run the fused op.

    Args:
        inplace: write the result into ``x`` and return it (inference only). Raises a
            RuntimeError if autograd would need the result, i.e. grad mode is on and any input
            requires grad.
    """
    if torch.jit.is_scripting():
        # TorchScript cannot see through the Python custom op: the reference maths instead.
        y = bam_gate_ref(x, channel_logits, spatial_logits, combine)
        if inplace:
            return x.copy_(y)
        return y
    check_combine(combine, "bam_gate")
    if inplace:
        if torch.is_grad_enabled() and (
            x.requires_grad or channel_logits.requires_grad or spatial_logits.requires_grad
        ):
            raise RuntimeError(
                "bam_gate(inplace=True) is for inference only, but autograd is recording and "
                "an input requires grad. Run under torch.no_grad()/torch.inference_mode(), or "
                "use inplace=False."
            )
        if get_backend() == "reference" or combine == "max" or torch.onnx.is_in_onnx_export():
            return x.copy_(bam_gate_ref(x, channel_logits, spatial_logits, combine))
        bam_gate_inplace_op(x, channel_logits, spatial_logits, combine)
        return x
    # ONNX has no kernel for the custom op: export the reference maths it can translate.
    if get_backend() == "reference" or combine == "max" or torch.onnx.is_in_onnx_export():
        return bam_gate_ref(x, channel_logits, spatial_logits, combine)
    if _functorch_wrapped(x, channel_logits, spatial_logits):
        # Under torch.func transforms: the op's ATen maths as plain, differentiable ops.
        _check_shapes(x, channel_logits, spatial_logits, combine)
        x, channel_logits, spatial_logits = _common(x, channel_logits, spatial_logits)
        return _forward_aten(x, channel_logits, spatial_logits, combine)
    return bam_gate_op(x, channel_logits, spatial_logits, combine)
