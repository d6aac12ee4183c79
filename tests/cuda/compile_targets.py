"""Compile every kernel variant BAM-ResNet-50 launches for NVIDIA targets (no GPU needed) and
print each one's resource use as JSON lines; run by tests/cuda/test_kernels.py in a subprocess:
``python tests/cuda/compile_targets.py 90 80 89`` (compute capabilities, default 90; the
first target gets every dtype and layout, the others the two the benchmarks run: bf16
channels_last and fp32 NCHW; every target also gets fp32 without TF32 in both layouts).
``--partial`` first: no target gets every dtype and layout (the test runs ``90`` and
``--partial 80 89`` side by side, about the same work each, one per core).

The kernels are reached through the public functions of torch_bam.cuda.kernels, called on meta
tensors of the network's shapes, with ``kernels._launch`` replaced by Triton's ``warmup`` (which
compiles exactly what a launch would, with the same specialisation, and launches nothing) and a
stand-in driver that names the target. Registers and spills come from the log of the
ptxas run Triton makes (TRITON_DUMP_PTXAS_LOG); a fresh TRITON_CACHE_DIR makes it compile.
"""

import contextlib
import io
import json
import os
import re
import sys

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

# (C, H*W side) of BAM-ResNet-50's three blocks, at B = 64.
SHAPES = [(256, 56), (512, 28), (1024, 14)]
BATCH = 64
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


class _Target:
    """What Triton's JIT asks of a driver before it compiles: a stand-in for an sm_<cc> GPU."""

    def __init__(self, cc: int):
        self.cc = cc

    def get_current_device(self):
        return self.cc  # Triton keeps one compile cache (and target) per device: one per cc

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", self.cc, 32)

    def get_device_interface(self):
        return torch.cuda

    def get_active_torch_device(self):
        return torch.device("meta")


def _ptxas(log: str) -> dict:
    """Registers, stack frame and spills from ptxas's own -v log of this compile."""
    pat = {
        "registers": r"Used (\d+) registers",
        "stack_frame": r"(\d+) bytes stack frame",
        "spill_stores": r"(\d+) bytes spill stores",
        "spill_loads": r"(\d+) bytes spill loads",
    }
    out = {}
    for name, p in pat.items():
        m = re.search(p, log)
        out[name] = int(m.group(1)) if m else None
    return out


def _launches(k, dtypes, formats) -> None:
    """Every launch of the three blocks' training and inference steps, and of the gate op."""
    for ch, side in SHAPES:
        h = ch // 16
        for dtype in dtypes:
            for fmt in formats:
                def t(*shape, dt=dtype, fmt=torch.contiguous_format):
                    return torch.empty(*shape, device="meta", dtype=dt).contiguous(
                        memory_format=fmt
                    )

                x = t(BATCH, ch, side, side, fmt=fmt)
                c, s = t(BATCH, ch), t(BATCH, 1, side, side)
                w, bias = t(h, ch, 1, 1, dt=torch.float32), t(h, dt=torch.float32)
                dr = t(BATCH, h, side, side, fmt=torch.channels_last)
                # The block's launches (small tensors in the compute dtype, weights float32).
                k.pool_reduce(x, w, bias, pooled_dtype=dtype)
                k.gate_forward(x, c, s, False)
                k.gate_backward_reduce(x, x, c, s, False, out_dtype=dtype)
                k.gate_backward_dx(x, c, s, False, w, dr, c)
                f32 = [t(h, dt=torch.float32) for _ in range(4)]  # BN weight, bias, running
                w1, w2, b2 = t(h, ch, dt=torch.float32), t(ch, h, dt=torch.float32), t(ch)
                for train in (True, False):  # training, and inference or a frozen BatchNorm
                    z, a, mean, invstd, _ = k.mlp_forward(c, w1, f32[0], *f32, w2, b2, train,
                                                          0.1, 1e-5)  # fmt: skip
                    k.mlp_backward(c, c, z, a, mean, invstd, f32[0], w1, w2, train, True, f32[0],
                                   f32[1], b2)  # fmt: skip
                # The bam_gate op's (the plain path's gate on CUDA).
                k.gate_backward(x, x, c, s, False)


def main(argv: list[str]) -> int:
    partial = argv[:1] == ["--partial"]
    targets = [int(a) for a in argv[partial:]] or [90]
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    from torch_bam.cuda import kernels as k

    seen: dict = {}
    cc = [0]

    def launch(kernel, grid, *args, **meta):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # Triton prints ptxas's log when it compiles
            compiled = kernel.warmup(*args, grid=grid, **meta)
        key = (cc[0], kernel.fn.__name__, compiled.hash)
        if key not in seen:
            row = {"sm": cc[0], "kernel": kernel.fn.__name__,
                   "num_warps": compiled.metadata.num_warps, "shared": compiled.metadata.shared,
                   **_ptxas(log.getvalue())}  # fmt: skip
            row["meta"] = {n: v for n, v in meta.items() if isinstance(v, (int, bool, str))}
            row["dtypes"] = [str(a.dtype)[6:] for a in args if isinstance(a, torch.Tensor)]
            row["shape"] = [list(a.shape) for a in args if isinstance(a, torch.Tensor)][0]
            seen[key] = row
            print(json.dumps(row), flush=True)

    k._launch = launch
    k._check_x = lambda x, name: None  # meta tensors: shapes only
    for i, target in enumerate(targets):
        cc[0] = target
        driver.set_active(_Target(target))
        if i == 0 and not partial:
            _launches(k, DTYPES, (torch.contiguous_format, torch.channels_last))
        else:  # what the benchmarks run, and both layouts of both dtype kinds
            _launches(k, (torch.bfloat16,), (torch.channels_last,))
            _launches(k, (torch.float32,), (torch.contiguous_format,))
        # float32 with cudnn.allow_tf32 off: the 1x1 reduce's dots without tensor cores (FMA),
        # which take their own tiles (kernels._pool_tile, kernels._dx_tile).
        flag = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            _launches(k, (torch.float32,), (torch.contiguous_format, torch.channels_last))
        finally:
            torch.backends.cudnn.allow_tf32 = flag
    print("done", len(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
