"""Which code runs a BAM block: the one place that chooses, per device and mode.

:meth:`torch_bam.BAM.forward` calls :func:`run_block`; it returns the block's output, or None
for the plain path (the modules' own forward: ATen layers and the ``bam_gate`` op).

======================================  =================  =================================
situation                               path               code
======================================  =================  =================================
backend "reference" or "aten"           plain              bam.py modules + functional.py
TorchScript, jit.trace, FX, ONNX, meta  plain              bam.py modules + functional.py
CUDA tensor, backend "auto"             CUDA room          cuda/block.py (ops) on
                                                           cuda/kernels.py (Triton)
any device, backend "triton"            CUDA room          same; on CPU through the Triton
                                                           interpreter (TRITON_INTERPRET=1)
CPU, backend "auto", autograd           CPU room           cpu/block.py (memory-saving
recording, eager                                           autograd), cpu/gate.py (C kernel)
CPU, backend "auto", otherwise          plain, CPU tricks  bam.py modules; cpu/layers.py
(inference, torch.compile)                                 (1x1 convs as matmuls, NCHW rule)
======================================  =================  =================================

A room declines a block it does not support (hooks inside the gates, layers BAM does not
build, a gate narrower than the CPU room's ``MIN_HIDDEN``, ``inplace=True`` in inference on the
CUDA room, ...) and the block takes the plain path; every path gives the same results to
rounding (tests/test_dispatch.py, tests/cuda/test_block.py, tests/test_block_autograd.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from .cpu import block as cpu_block
from .cuda import block as cuda_block
from .functional import get_backend

__all__ = ["block_path", "run_block"]


# Looked up once, without importing triton (torch.compile traces block_path on every call).
_TRITON = importlib.util.find_spec("triton") is not None


def _choose(block: nn.Module, x: Tensor):
    """``(path, plan)``: the path (see the table) and, for the CUDA room, the block's layers as
    it checked them, so that running the block does not walk them a second time."""
    if not isinstance(x, Tensor) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return "plain", None  # FX proxies, traces and exports record the plain ops
    backend = get_backend()
    device = x.device.type
    if backend == "triton" or (backend == "auto" and device == "cuda" and _TRITON):
        if getattr(block, "inplace", False) and not torch.is_grad_enabled():
            return "plain", None  # BAM(inplace=True) in inference writes into x: plain gate op
        plan = cuda_block.plan(block, x)
        return ("plain", None) if plan is None else ("cuda", plan)
    if backend == "auto" and device == "cpu" and cpu_block.can_use(block, x):
        return "cpu", None
    return "plain", None


def block_path(block: nn.Module, x: Tensor) -> str:
    """``"plain"``, ``"cpu"`` or ``"cuda"``: the path ``block(x)`` takes (see the table)."""
    return _choose(block, x)[0]


def run_block(block: nn.Module, x: Tensor) -> Tensor | None:
    """The block's output through its room, or None: take the plain path."""
    path, plan = _choose(block, x)
    if path == "cuda":
        return cuda_block.block_forward(block, x, plan)
    if path == "cpu":
        return cpu_block.bam_block_train(block, x)
    return None
