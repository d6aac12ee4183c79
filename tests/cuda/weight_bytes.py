"""Bytes the Triton kernels load from each tensor, counted on CPU under the Triton interpreter.

The interpreter runs a kernel on the CPU tensors' own memory: every ``tl.load`` becomes one
``InterpreterBuilder.create_masked_load`` over an array of addresses and a mask. Counting the
unmasked addresses inside a tensor's memory gives the bytes a GPU's programs would request
for it (from L2 or DRAM: the count does not say which).

Used by tests/cuda/test_kernels.py for the reduce conv's weight at BAM-ResNet-50's block
shapes; ``TRITON_INTERPRET=1 PYTHONPATH=src python -m tests.cuda.weight_bytes`` prints the
table that docs/performance.md quotes.
"""

import contextlib

import numpy as np
import torch

SHAPES = [(256, 56), (512, 28), (1024, 14)]  # BAM-ResNet-50's blocks: (C, H = W); h = C / 16
# gate_backward_dx's persistent grid scales with the batch: counted at B = 1 with
# DX_PROGRAMS / 64, each program walks at most as many tiles as at B = 64 with DX_PROGRAMS,
# so it reads the weight at least as often per byte of dy (the ratio bounds B = 64's).
BATCH = 64
# (x's dtype, cudnn.allow_tf32, label): float32 dots without TF32 take other tiles.
PRECISIONS = [(torch.bfloat16, True, "bfloat16"), (torch.float32, True, "float32"),
              (torch.float32, False, "float32, no TF32")]  # fmt: skip


@contextlib.contextmanager
def loads(**tensors: torch.Tensor):
    """Yields ``{name: bytes}``, filled with the bytes the kernels launched inside the block
    load from each tensor (lanes masked off load nothing)."""
    from triton.runtime.interpreter import InterpreterBuilder

    spans = {n: (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
             for n, t in tensors.items()}  # fmt: skip
    got = dict.fromkeys(tensors, 0)
    real = InterpreterBuilder.create_masked_load

    def load(self, ptrs, mask, other, *args):
        addr = ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)]
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        for n, (lo, hi) in spans.items():
            got[n] += int(np.count_nonzero((addr >= lo) & (addr < hi))) * size
        return real(self, ptrs, mask, other, *args)

    InterpreterBuilder.create_masked_load = load
    try:
        yield got
    finally:
        InterpreterBuilder.create_masked_load = real


def _maps(ch: int, side: int, dtype: torch.dtype, fmt: torch.memory_format, gen):
    def rand(*shape, fmt=torch.contiguous_format):
        t = torch.randn(*shape, generator=gen).to(dtype)
        return t.contiguous(memory_format=fmt)

    h = ch // 16
    # The weight in x's dtype: the block passes it so (one cast a step with the others).
    return (rand(1, ch, side, side, fmt=fmt), rand(h, ch),
            rand(1, h, side, side, fmt=torch.channels_last))  # fmt: skip


def pool_reduce(ch: int, side: int, dtype: torch.dtype, fmt: torch.memory_format, gen):
    """(bytes of x, bytes loaded from x, bytes loaded from W_r) of one image's pool_reduce."""
    from torch_bam.cuda import kernels

    x, w, _ = _maps(ch, side, dtype, fmt, gen)
    with loads(x=x, w=w) as got:
        kernels.pool_reduce(x, w)
    return x.numel() * x.element_size(), got["x"], got["w"]


def gate_backward_dx(ch: int, side: int, dtype: torch.dtype, fmt: torch.memory_format, gen):
    """(bytes of dy, bytes loaded from dy, bytes loaded from W_r) of gate_backward_dx on one
    image, with the grid it would have at B = 64 scaled to one image (see BATCH)."""
    from torch_bam.cuda import kernels

    dy, w, dr = _maps(ch, side, dtype, fmt, gen)
    c, s = torch.randn(1, ch, generator=gen), torch.randn(1, 1, side, side, generator=gen)
    programs = kernels.DX_PROGRAMS
    kernels.DX_PROGRAMS = max(1, programs // BATCH)
    try:
        with loads(dy=dy, w=w) as got:
            kernels.gate_backward_dx(dy, c, s, False, w, dr, c)
    finally:
        kernels.DX_PROGRAMS = programs
    return dy.numel() * dy.element_size(), got["dy"], got["w"]


def main() -> None:
    """Print W_r's bytes loaded over x's (dy's) bytes for both kernels; float32 with the
    default ``cudnn.allow_tf32`` (on: TF32 dots) and without TF32 (FMA dots, smaller tiles)."""
    gen = torch.Generator().manual_seed(0)
    print("| kernel | dtype | layout | " + " | ".join(f"{c}@{s}" for c, s in SHAPES) + " |")
    flag = torch.backends.cudnn.allow_tf32
    for name, fn in (("pool_reduce", pool_reduce), ("gate_backward_dx", gate_backward_dx)):
        for dtype, tf32, label in PRECISIONS:
            for layout, fmt in (("NCHW", torch.contiguous_format),
                                ("channels_last", torch.channels_last)):  # fmt: skip
                torch.backends.cudnn.allow_tf32 = tf32
                try:
                    ratios = [fn(ch, side, dtype, fmt, gen) for ch, side in SHAPES]
                finally:
                    torch.backends.cudnn.allow_tf32 = flag
                cells = " | ".join(f"{w / x:.2f}" for x, _, w in ratios)
                print(f"| {name} | {label} | {layout} | {cells} |")


if __name__ == "__main__":
    main()
