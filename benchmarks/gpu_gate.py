"""GPU: the fused Triton gate against a plain copy of x (the bandwidth floor), same run.

Run from the repository root on a CUDA machine:  PYTHONPATH=src:. python benchmarks/gpu_gate.py
``run_benchmarks.py`` calls :func:`bench_gpu` and puts its table in RESULTS.md when CUDA is
available. The gate reads x once and writes y once, as a copy does, so
``copy time / gate time`` is the fraction of the copy's bandwidth the kernel reaches
(target: at least 0.8 for the forward pass).
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import torch

from torch_bam.functional import bam_gate, bam_gate_ref

SHAPES = [(32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14)]


def _cuda_ms(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return min(times)


def bench_gpu() -> tuple[list[str], list[str]]:
    """The table and the verdict lines (forward, per shape, dtype and memory format)."""
    lines = [
        f"### GPU: the gate alone on {torch.cuda.get_device_name()}, ms (min of 50)",
        "",
        "| shape | dtype | format | copy of x | fused fwd | reference fwd | fused fwd+bwd | reference fwd+bwd | copy / fused fwd |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    worst = None
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("CL", torch.channels_last)):
                x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
                c = torch.randn(shape[:2], device="cuda", dtype=dtype)
                s = torch.randn(shape[0], 1, *shape[2:], device="cuda", dtype=dtype)
                dy = torch.randn_like(x)
                xg, cg, sg = (t.clone().requires_grad_() for t in (x, c, s))
                copy_ms = _cuda_ms(lambda: x.clone(memory_format=torch.preserve_format))
                fused = _cuda_ms(lambda: bam_gate(x, c, s))
                ref = _cuda_ms(lambda: bam_gate_ref(x, c, s))
                fused_fb = _cuda_ms(lambda: bam_gate(xg, cg, sg).backward(dy))
                ref_fb = _cuda_ms(lambda: bam_gate_ref(xg, cg, sg).backward(dy))
                frac = copy_ms / fused
                worst = frac if worst is None else min(worst, frac)
                lines.append(
                    f"| {list(shape)} | {str(dtype)[6:]} | {fmt_name} | {copy_ms:.3f} | {fused:.3f} "
                    f"| {ref:.3f} | {fused_fb:.3f} | {ref_fb:.3f} | {frac:.2f} |"
                )
                print(lines[-1], flush=True)
    verdicts.append(
        f"- GPU fused gate forward, worst case over shapes, dtypes and formats: {worst:.2f} of a "
        f"copy's bandwidth (target >= 0.8: {'met' if worst >= 0.8 else 'NOT met'})"
    )
    return lines, verdicts


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("gpu_gate.py needs a CUDA device (torch.cuda.is_available() is False).")
    table, verdict = bench_gpu()
    print("\n".join(verdict))
