"""Which code runs a BAM block: the one place that chooses, per device and mode.

:meth:`torch_bam.BAM.forward` calls :func:`run_block`; it returns the block's output, or None
for the plain path (the modules' own forward: ATen layers and the ``bam_gate`` op, whose kernel
torch's dispatcher picks by device from those ``torch_bam.cpu.gate`` and ``torch_bam.cuda.gate``
register -- imported here, so that importing torch_bam registers them).

======================================  =================  =================================
situation                               path               code
======================================  =================  =================================
backend "reference" or "aten"           plain              bam.py modules + functional.py
TorchScript, jit.trace, FX, ONNX, meta  plain              bam.py modules + functional.py
CUDA tensor, backend "auto"             CUDA room          cuda/block.py (ops) on
                                                           cuda/kernels.py (Triton)
any device, backend "triton"            CUDA room          same; on CPU through the Triton
                                                           interpreter (TRITON_INTERPRET=1)
CPU, backend "auto", autograd           CPU room,          cpu/block.py (memory-saving
recording, eager                        training           autograd), cpu/gate.py (C kernel)
CPU, backend "auto", otherwise          CPU room,          cpu/block.py's layers with
(inference, torch.compile, narrow)      forward            cpu/layers.py's tricks (1x1 convs
                                                           as matmuls, NCHW rule)
======================================  =================  =================================

A room takes only a block whose gates are the ones BAM builds (:func:`plain_gate`) holding the
layers BAM builds, with no hook attached (on a layer, a Sequential, a gate, or global); it
declines any other (hooks, pruning, quantisation observers, a replaced layer, a ``torch.func``
transform on the CPU room, ``inplace=True`` in inference on the CUDA room, ...) and the block
takes the plain path, so that hooks, pruning and quantisation see the modules' own computation
(tests/test_module_contract.py). Every path gives the same results to rounding
(tests/test_dispatch.py, tests/cuda/test_block.py, tests/cpu/test_block_autograd.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from .cpu import block as cpu_block
from .cpu import gate as _cpu_gate  # noqa: F401 (registers the gate op's CPU kernel)
from .cuda import block as cuda_block
from .cuda import gate as _cuda_gate  # noqa: F401 (registers the gate op's CUDA kernel)
from .functional import get_backend

__all__ = ["block_path", "plain_gate", "run_block"]


# Looked up once, without importing triton (torch.compile traces block_path on every call).
_TRITON = importlib.util.find_spec("triton") is not None

_PLAIN_GATES: set[type] = set()


def plain_gate(cls):
    """Class decorator: a gate whose forward is exactly its Sequential's layers, which a room
    may compute itself (not a subclass, which may compute otherwise)."""
    _PLAIN_GATES.add(cls)
    return cls


def _choose(block: nn.Module, x: Tensor):
    """``(path, plan)``: the path (see the table) and what the room checked (its plan), so that
    running the block does not walk the layers a second time."""
    if not isinstance(x, Tensor) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return "plain", None  # FX proxies, traces and exports record the plain ops
    if block.training and x.shape[0] == 1:
        return "plain", None  # one sample: the channel gate normalises as in eval (bam.py)
    if type(block.channel_att) not in _PLAIN_GATES or type(block.spatial_att) not in _PLAIN_GATES:
        return "plain", None  # also a one-gate BAM (the paper's ablations): its other gate is None
    if getattr(block, "combine", "sum") not in ("sum", "product"):
        return "plain", None  # combine="max" (an ablation): the rooms compute sum and product
    backend = get_backend()
    device = x.device.type
    if backend == "triton" or (backend == "auto" and device == "cuda" and _TRITON):
        if getattr(block, "inplace", False) and not torch.is_grad_enabled():
            return "plain", None  # BAM(inplace=True) in inference writes into x: plain gate op
        plan = cuda_block.plan(block, x)
        return ("plain", None) if plan is None else ("cuda", plan)
    if backend == "auto" and device == "cpu":
        layers = cpu_block.plan(block, x)
        if layers is None:
            return "plain", None
        mode = "train" if cpu_block.can_use(block, x, layers) else "forward"
        return "cpu", (mode, layers)
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
        mode, layers = plan
        if mode == "train":
            return cpu_block.bam_block_train(block, x, layers)
        return cpu_block.block_forward(block, x, layers)
    return None
