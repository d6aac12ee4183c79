"""The gate op's CUDA kernel: ``torch_bam::bam_gate`` and its backward on the Triton kernels of
``torch_bam.cuda.kernels``, registered with ``torch.library`` for "cuda" (``torch_bam.functional``
defines the ops; their in-place form keeps its default, the out-of-place op and a copy).

By backend (``torch_bam.functional.set_backend``): ``"auto"`` runs the ATen composition (what
was measured on GPUs), or the Triton kernels on the dtypes they take (float16, bfloat16,
float32) on a GPU class listed in ``verified.json`` (``torch_bam.cuda.support``); ``"aten"``
always the ATen composition; ``"triton"`` the Triton kernels, or one error line where they
cannot run (``support.require``). The CPU kernel (``torch_bam.cpu.gate``) hands CPU tensors
here under ``"triton"``: they run through the Triton interpreter.

Nothing heavy is imported here: ``torch_bam.cuda.kernels`` (and triton) load on the first call.
"""

from __future__ import annotations

from torch import Tensor

from .. import functional
from . import support

__all__ = ["gate_backward", "gate_forward"]


def _triton_kernels(x: Tensor):
    """``torch_bam.cuda.kernels`` if it runs this call, else None (the ATen composition)."""
    backend = functional.get_backend()
    if backend == "auto":
        if x.device.type != "cuda" or not support.default_on(x.device):
            return None  # the ATen composition: what was measured on GPUs
    elif backend == "triton":
        support.require(x.device)  # one line naming the reason and the fix
    else:
        return None
    from . import kernels  # imports triton

    if x.dtype not in kernels.DTYPES:
        if backend == "auto":
            return None
        raise TypeError(
            f"bam_gate: backend 'triton' takes float16, bfloat16 or float32 tensors, got "
            f"{x.dtype}. Convert them, or use set_backend('auto')."
        )
    return kernels


def gate_forward(x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str):
    """The gate op on the Triton kernels (or the ATen composition, see the module docstring)."""
    x, c, s, fmt = functional.gate_operands(x, channel_logits, spatial_logits, combine)
    kernels = _triton_kernels(x)
    if kernels is None:
        return functional.gate_forward_aten(x, c, s, combine)
    # Any layout: the kernels take x contiguous in its own memory format.
    y = kernels.gate_forward(x.contiguous(memory_format=fmt), c, s, combine == "product")
    return y.contiguous(memory_format=fmt)


def gate_backward(
    grad: Tensor, x: Tensor, channel_logits: Tensor, spatial_logits: Tensor, combine: str
):
    """The gate's backward op in one pass over ``grad`` and ``x`` (see :func:`gate_forward`)."""
    xx, cc, ss, fmt = functional.gate_operands(x, channel_logits, spatial_logits, combine)
    kernels = _triton_kernels(xx)
    if kernels is None:
        return functional.gate_backward_aten(grad, x, channel_logits, spatial_logits, combine)
    xx = xx.contiguous(memory_format=fmt)
    dx, dc, ds = kernels.gate_backward(grad, xx, cc, ss, combine == "product")
    return functional.gate_grads(x, channel_logits, spatial_logits, dx, dc, ds)


functional.bam_gate_op.register_kernel("cuda")(gate_forward)
functional.bam_gate_backward_op.register_kernel("cuda")(gate_backward)
