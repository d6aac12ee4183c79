"""Should the CPU room's memory-saving training path skip small maps?

The path (``torch_bam.cpu.block.bam_block_train``) keeps less for backward and recomputes the
small layers between its two kept maps; ``RESULTS_block_autograd.md`` found it up to ~20%
slower than plain autograd on maps of 16x16 and less, per block. This study times whole
networks' training steps, in the same turns: the network without BAM, with BAM as shipped, with
the path skipped on maps of at most 8x8 (a candidate rule: plain autograd there, with the CPU
tricks), and with the path never taken. ``bam_resnet18`` at 64 px has its last two BAMs on 8x8
and 4x4 maps; ``bam_small_cnn`` has none that small (a control: it should not move).

    PYTHONPATH=src python benchmarks/studies/small_map_autograd.py   # writes RESULTS_small_map_autograd.md
"""

# Tables are long lines; lambdas are timed inside the loop that defines them:
# ruff: noqa: E501, B023

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch_bam.cpu.block as cpu_block  # noqa: E402
from benchmarks._timer import measure  # noqa: E402
from benchmarks.studies._common import loadavg, write_results  # noqa: E402
from torch_bam import create_model  # noqa: E402

TURNS = 30
ROWS = [("resnet18", 8, 64), ("small_cnn", 64, 32)]
_can_use = cpu_block.can_use


def _larger_than_8x8(block, x, layers=None):
    return _can_use(block, x, layers) and x.shape[2] * x.shape[3] > 64


def _never(block, x, layers=None):
    return False


def _step(model, x, t, rule):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with mock.patch.object(cpu_block, "can_use", rule):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), t).backward()
            opt.step()

    return step


def main() -> None:
    torch.set_num_threads(2)
    before = loadavg()
    body = [
        f"- float32, NCHW, SGD training steps; each table's calls timed in {TURNS} turns, each turn in a random order (`benchmarks/_timer.py`); ratios are medians of per-turn ratios with a 95% interval",
        "",
    ]
    for name, b, size in ROWS:
        torch.manual_seed(0)
        x = torch.randn(b, 3, size, size)
        t = torch.randint(0, 10, (b,))
        base = create_model(name, num_classes=10).train()
        bam = create_model(f"bam_{name}", num_classes=10).train()
        fns = {
            name: _step(base, x, t, _can_use),
            f"bam_{name} as shipped": _step(bam, x, t, _can_use),
            f"bam_{name}, path skipped on maps <= 8x8": _step(bam, x, t, _larger_than_8x8),
            f"bam_{name}, path never taken": _step(bam, x, t, _never),
        }
        times = measure(fns, TURNS)
        body += [
            f"## {name} and bam_{name}, B={b}, {size}x{size}, training step",
            "",
            f"| model | ms (median) | / {name} (median [95% CI]) |",
            "|---|---|---|",
        ]
        for k in fns:
            body.append(f"| {k} | {times.median(k):.1f} | {times.ratio(k, name)} |")
            print(k, times.ratio(k, name))
        body.append("")
    write_results(
        Path(__file__).with_name("RESULTS_small_map_autograd.md"),
        "The CPU room's memory-saving path on small maps, in whole networks",
        before,
        body,
    )


if __name__ == "__main__":
    main()
