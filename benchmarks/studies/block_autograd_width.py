"""Training step of one BAM block: the memory-saving path against plain autograd, by gate width.

Run from the repository root:  PYTHONPATH=src python benchmarks/studies/block_autograd_width.py
Writes benchmarks/studies/RESULTS_block_autograd.md. It is the evidence for
``torch_bam.cpu.block.MIN_HIDDEN``: below that width ``C // r`` the block keeps plain
autograd. Both paths are timed here whatever the rule says, in turns, in the same run.
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch_bam.cpu.block as block_autograd  # noqa: E402
from benchmarks.studies._common import interleaved as _interleaved  # noqa: E402
from benchmarks.studies._common import loadavg, write_results  # noqa: E402
from torch_bam import BAM  # noqa: E402

OUT = Path(__file__).with_name("RESULTS_block_autograd.md")
# (batch, channels, size); the gate width is channels // 16.
SHAPES = [
    (64, 32, 16),
    (64, 32, 32),
    (16, 32, 56),
    (64, 64, 16),
    (32, 64, 28),
    (16, 64, 56),
    (32, 128, 14),
    (32, 128, 16),
    (32, 128, 28),
    (64, 256, 8),
    (32, 256, 16),
    (32, 256, 28),
    (32, 512, 14),
]


def main(reps: int = 15) -> None:
    torch.set_num_threads(2)
    load_before = loadavg()
    rows = []
    for b, c, s in SHAPES:
        block = BAM(c).train()
        x = torch.randn(b, c, s, s, requires_grad=True)
        dy = torch.randn(b, c, s, s)

        def timed(can_use: bool):
            def step():
                with mock.patch.object(block_autograd, "can_use", lambda *a: can_use):
                    block(x).backward(dy)

            return step

        res = _interleaved({"saving": timed(True), "plain": timed(False)}, reps)
        saving, plain = res["saving"], res["plain"]
        rows.append(
            f"| {b}x{c}x{s}x{s} | {c // 16} | {saving:.2f} | {plain:.2f} | {saving / plain:.2f} |"
        )
        print(rows[-1], flush=True)
    write_results(
        OUT,
        "Memory-saving block autograd against plain autograd, by gate width",
        load_before,
        [
            f"- one forward+backward of BAM(C) in training, float32 NCHW, minimum of {reps} after "
            "two warm-up calls, the two paths timed in turns",
            f"- the block takes the memory-saving path when C // r >= {block_autograd.MIN_HIDDEN}",
            "",
            "| input | C // r | memory-saving ms | plain autograd ms | ratio |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
