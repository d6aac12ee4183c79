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
CUDA tensor, backend "auto"             plain (cuDNN       bam.py modules + functional.py's
                                        layers, ATen gate) ATen gate: the path measured on GPUs
CUDA tensor, backend "auto", a GPU      CUDA room          cuda/block.py (ops) on
class in cuda/verified.json                                cuda/kernels.py (Triton)
backend "triton" (set_backend or        CUDA room          same; on CPU through the Triton
TORCH_BAM_BACKEND=triton)                                  interpreter (TRITON_INTERPRET=1);
                                                           where it cannot run (cuda/support.py:
                                                           not NVIDIA, not sm_80..sm_90, an
                                                           untested triton, CPU without the
                                                           interpreter) one error line
CPU, backend "auto", autograd           CPU room,          cpu/block.py (memory-saving
recording, eager                        training           autograd), cpu/gate.py (C kernel)
CPU, backend "auto", otherwise          CPU room,          cpu/block.py's layers; in training
(inference, torch.compile, narrow)      forward            with cpu/layers.py's tricks (1x1
                                                           convs as matmuls, NCHW rule), in
                                                           eval as the modules compute them
======================================  =================  =================================

In one line: CUDA users get the plain path, the one measured on GPUs, unless their GPU class
is in ``torch_bam/cuda/verified.json`` (empty: no GPU run has verified the Triton path yet);
``set_backend("triton")`` or ``TORCH_BAM_BACKEND=triton`` opts in wherever it can run.

A room takes only a block that :func:`room_eligible` accepts -- gates that are the ones BAM
builds (:func:`plain_gate`) -- and whose gates hold the layers BAM builds, with no hook
attached (on a layer, a Sequential, a gate, or global); it declines any other (hooks,
pruning, quantisation observers, a replaced layer, a ``torch.func`` transform on the CPU room,
``inplace=True`` in inference on the CUDA room, ...) and the block takes the plain path, so
that hooks, pruning and quantisation see the modules' own computation
(tests/test_module_contract.py). Every path gives the same results to rounding
(tests/test_dispatch.py, tests/cuda/test_block.py, tests/cpu/test_block_autograd.py); on CPU
in eval, bitwise the plain path's, which is what FX records (timm's FX test compares with ``==``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .cpu import block as cpu_block
from .cpu import gate as _cpu_gate  # noqa: F401 (registers the gate op's CPU kernel)
from .cuda import block as cuda_block
from .cuda import gate as _cuda_gate  # noqa: F401 (registers the gate op's CUDA kernel)
from .cuda import support as cuda_support
from .functional import get_backend

__all__ = ["block_path", "plain_gate", "room_eligible", "run_block"]

_PLAIN_GATES: set[type] = set()


def plain_gate(cls):
    """Class decorator: a gate whose forward is exactly its Sequential's layers, which a room
    may compute itself (not a subclass, which may compute otherwise)."""
    _PLAIN_GATES.add(cls)
    return cls


def room_eligible(block: nn.Module, x) -> bool:
    """Whether a room may compute ``block(x)`` at all; if not, the plain path does. Every rule
    that sends a whole block to the plain path whatever the device lives here (each room then
    checks the layers it knows: ``cpu_block.plan``, ``cuda_block.plan``)."""
    if not isinstance(x, Tensor) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False  # FX proxies, traces and exports record the plain ops
    if block.training and x.shape[0] == 1:
        return False  # one sample: the channel gate normalises as in eval (bam.py)
    if type(block.channel_att) not in _PLAIN_GATES or type(block.spatial_att) not in _PLAIN_GATES:
        return False  # also a one-gate BAM (the paper's ablations): its other gate is None
    # combine="max" (an ablation): the rooms compute sum and product only
    return getattr(block, "combine", "sum") in ("sum", "product")


def _cuda_room(backend: str, x: Tensor) -> bool:
    """Whether the CUDA room (Triton) is asked for: forced by ``"triton"`` (an error line where
    it cannot run, except on tracing devices such as meta), or by ``"auto"`` on a CUDA tensor
    whose GPU class is verified (cuda/support.py)."""
    device = x.device
    if backend == "triton":
        if device.type in ("cpu", "cuda"):
            cuda_support.require(device)
            return True
        return False
    return backend == "auto" and device.type == "cuda" and cuda_support.default_on(device)


def _choose(block: nn.Module, x: Tensor):
    """``(path, plan)``: the path (see the table) and what the room checked (its plan), so that
    running the block does not walk the layers a second time."""
    if not room_eligible(block, x):
        return "plain", None
    backend = get_backend()
    if _cuda_room(backend, x):
        if getattr(block, "inplace", False) and not torch.is_grad_enabled():
            return "plain", None  # BAM(inplace=True) in inference writes into x: plain gate op
        plan = cuda_block.plan(block, x)
        return ("plain", None) if plan is None else ("cuda", plan)
    if backend == "auto" and x.device.type == "cpu":
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
