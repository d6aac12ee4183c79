"""Kernel launches of one BAM block's training step, counted on CPU (under the interpreter).

What a GPU would launch: every ATen op dispatched, except those that launch nothing (views,
allocations, metadata), each counted as one launch (cuDNN and some ATen ops launch more than
one kernel each: so this is a floor, the same for both sides of a comparison), plus one per
Triton kernel launch. The Triton interpreter's own tensor work inside a launch is not counted.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

NO_LAUNCH = {
    "aten.empty.memory_format",
    "aten.empty_strided.default",
    "aten.empty_like.default",
    "aten.new_empty.default",
    "aten.new_empty_strided.default",
    "aten._unsafe_view.default",
    "aten.detach.default",
    "aten.alias.default",
    "aten.lift_fresh.default",
}

SYNCS = {
    "aten._local_scalar_dense.default",  # .item(), .tolist(), float(t), if t: ...
    "aten.item.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten.allclose.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.unique.default",
}

TRITON = "triton kernel launch"


class Launches(TorchDispatchMode):
    """The ops (by name) that launch kernels, and the syncs, while active."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.in_launch = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not self.in_launch and not (func.is_view or name in NO_LAUNCH):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def count_step(block, x, precision, monkeypatch):
    """Launches of one training step of ``block`` on ``x`` (forward + backward), in a fresh
    autocast region when ``precision == "bf16"``, after a warm step and an in-place update of
    every parameter (as an optimizer step makes: the weights change between steps)."""
    from triton.runtime.interpreter import InterpretedFunction

    mode = Launches()
    real = InterpretedFunction.run
    counting = [False]

    def run(self, *args, **kwargs):
        if not counting[0]:
            return real(self, *args, **kwargs)
        mode.ops.append(TRITON)
        mode.in_launch = True
        try:
            return real(self, *args, **kwargs)
        finally:
            mode.in_launch = False

    monkeypatch.setattr(InterpretedFunction, "run", run)
    # dy as the layer after the block would give it: in x's dtype and layout.
    gen = torch.Generator().manual_seed(3)
    grad = torch.empty_like(x).copy_(torch.randn(x.shape, generator=gen))
    try:
        for counted in (False, True):
            block.zero_grad(set_to_none=True)
            xx = x.detach().clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                if counted:
                    counting[0] = True
                    with mode:
                        y = block(xx)
                        y.backward(grad)
                    counting[0] = False
                else:
                    y = block(xx)
                    y.backward(grad)
            with torch.no_grad():  # the optimizer's step
                for p in block.parameters():
                    p.add_(p.grad, alpha=-1e-3)
    finally:
        monkeypatch.undo()
    return mode.ops


def main() -> None:
    """Print the table in torch_bam/cuda/block.py's docstring (this path's column):
    ``TRITON_INTERPRET=1 PYTHONPATH=src python -m tests.cuda.launches``."""
    import pytest

    from tests.reference.seed_bam import BAM as SeedBAM
    from torch_bam import BAM
    from torch_bam.functional import set_backend

    set_backend("triton")
    print("| precision | layout | seed's block | this path (Triton) |")
    for precision in ("fp32", "bf16"):
        for layout in ("NCHW", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(2, 256, 8, 8).contiguous(memory_format=fmt)
            x = x.bfloat16() if precision == "bf16" else x
            ours, seed = (
                count_step(m(256).to(memory_format=fmt).train(), x, precision, pytest.MonkeyPatch())
                for m in (BAM, SeedBAM)
            )
            print(f"| {precision} | {layout} | {len(seed)} | {len(ours)} ({ours.count(TRITON)}) |")


if __name__ == "__main__":
    main()
