"""Page faults per call: why single timings on this machine move so much between runs.

Run from the repository root:  PYTHONPATH=src python benchmarks/studies/page_faults.py
Writes benchmarks/studies/RESULTS_page_faults.md.

PyTorch's CPU tensors come from glibc's malloc. glibc hands a large buffer back to the kernel
when it is freed (or when the top of its heap is trimmed), so the next buffer of that size
costs one page fault per 4 KiB page on first touch. Whether a given call pays that depends on
malloc's state, i.e. on what ran before it. This script times the training step of one BAM
block (the seed's code and ours, in turns) and of ResNet-50 and BAM-ResNet-50, and counts the
minor page faults of each call (``getrusage``), so the tables show how much of a call's time
moves with them. Linux only. Not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.studies._common import (  # noqa: E402
    SHAPES,
    bam_resnet50,
    fwd_bwd,
    loadavg,
    pair,
    write_results,
)
from tests.reference import seed_bam  # noqa: E402
from torch_bam import BAM  # noqa: E402

OUT = Path(__file__).with_name("RESULTS_page_faults.md")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def in_turns(fns: dict, reps: int) -> dict:
    """Per function: a list of (ms, minor page faults) per call, the functions called in turns."""
    for fn in fns.values():
        fn()
        fn()
    out = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            f0, t0 = _faults(), time.perf_counter()
            fn()
            out[k].append(((time.perf_counter() - t0) * 1e3, _faults() - f0))
    return out


def row(label: str, calls: list) -> str:
    ms = [t for t, _ in calls]
    faults = [f for _, f in calls]
    quiet = [t for t, f in calls if f < 100]
    faulty = [t for t, f in calls if f >= 100]

    def fmt(v):
        return f"{min(v):.1f}" if v else "-"

    return (
        f"| {label} | {min(ms):.1f} | {statistics.median(ms):.1f} | {max(ms):.1f} | "
        f"{statistics.mean(faults):.0f} | {len(quiet)} / {len(calls)} | {fmt(quiet)} | "
        f"{fmt(faulty)} |"
    )


def main(reps: int = 12) -> None:
    torch.set_num_threads(2)
    load_before = loadavg()
    rows = []
    for shape in SHAPES:
        seed, ours = pair(shape[1])
        seed.train(), ours.train()
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        res = in_turns({"seed": fwd_bwd(seed, x, dy), "ours": fwd_bwd(ours, x, dy)}, reps)
        for name in ("seed", "ours"):
            rows.append(row(f"block fwd+bwd {list(shape)}, {name}", res[name]))
            print(rows[-1], flush=True)
    torch.manual_seed(0)
    import torchvision

    xr = torch.randn(8, 3, 224, 224)
    target = torch.randint(0, 1000, (8,))
    models = {
        "ResNet-50": torchvision.models.resnet50(weights=None),
        "seed BAM-ResNet-50": bam_resnet50(seed_bam.BAM),
        "ours BAM-ResNet-50": bam_resnet50(BAM),
    }

    def step(m):
        def run():
            m.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(xr), target).backward()

        return run

    res = in_turns({k: step(m.train()) for k, m in models.items()}, max(4, reps // 2))
    for name, calls in res.items():
        rows.append(row(f"train step, batch 8, 224x224, {name}", calls))
        print(rows[-1], flush=True)
    write_results(
        OUT,
        "Page faults per call",
        load_before,
        [
            "- float32, NCHW, training mode; the functions of each group are called in turns, "
            "after two warm-up calls each. Faults are minor page faults of the whole process "
            "during the call (`getrusage`). A call with fewer than 100 is counted as quiet.",
            "",
            "| call | min ms | median ms | max ms | faults per call (mean) | quiet calls | "
            "min ms, quiet calls | min ms, calls with faults |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ],
        versions=f", glibc {' '.join(platform.libc_ver())}",
    )


if __name__ == "__main__":
    main()
