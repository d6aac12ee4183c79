"""Narrow gates (C // r < 16) and the channels_last layout on CPU.

Run from the repository root:  PYTHONPATH=src python benchmarks/studies/narrow_gate.py
Writes benchmarks/studies/RESULTS_narrow_gate.md, the evidence for ``torch_bam.cpu.layers.narrow`` and for
``torch_bam.cpu.layers.final_1x1``:

1. PyTorch's own BatchNorm2d, forward+backward in training and forward in eval, on NCHW and on
   channels_last maps, by channel count: the channels_last kernel is several times slower
   below 16 channels.
2. The spatial gate's final 1x1 conv to one map: ``F.conv2d`` against a matmul.
3. One BAM block with the rule (narrow gates keep their maps NCHW in training, and compute the
   1x1 reduce in NCHW) against the same block without it, timed in turns.
Not a test: nothing here runs under pytest.
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch_bam.cpu.layers as bam_module  # noqa: E402
from benchmarks.studies._common import interleaved as _interleaved  # noqa: E402
from benchmarks.studies._common import loadavg, write_results  # noqa: E402
from torch_bam import BAM  # noqa: E402

OUT = Path(__file__).with_name("RESULTS_narrow_gate.md")
CL = torch.channels_last


def batchnorm_rows(reps: int) -> list[str]:
    rows = []
    for b, s in ((64, 32), (8, 56), (32, 14)):
        for width in (2, 4, 8, 16, 32, 64):
            bn = nn.BatchNorm2d(width)
            x = torch.randn(b, width, s, s)
            fns = {}
            for name, mf in (("NCHW", torch.contiguous_format), ("CL", CL)):
                xg = x.contiguous(memory_format=mf).requires_grad_()
                g = torch.randn_like(xg)

                def train(xg=xg, g=g):
                    bn.train()
                    bn(xg).backward(g)

                def infer(xg=xg):
                    bn.eval()
                    with torch.no_grad():
                        bn(xg)

                fns[f"train {name}"], fns[f"eval {name}"] = train, infer
            r = _interleaved(fns, reps)
            rows.append(
                f"| {b}x{width}x{s}x{s} | {r['train NCHW']:.2f} | {r['train CL']:.2f} | "
                f"{r['train CL'] / r['train NCHW']:.2f} | {r['eval NCHW']:.3f} | {r['eval CL']:.3f} | "
                f"{r['eval CL'] / r['eval NCHW']:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def final_conv_rows(reps: int) -> list[str]:
    """The spatial gate's last layer, a 1x1 conv from h channels to one: F.conv2d against
    ``torch_bam.cpu.layers.final_1x1`` (a matmul), forward+backward."""
    rows = []
    for b, width, s in ((64, 2, 32), (32, 8, 28), (8, 16, 56), (8, 32, 28), (8, 64, 14)):
        conv = nn.Conv2d(width, 1, 1)
        fns = {}
        for name, mf in (("NCHW", torch.contiguous_format), ("CL", CL)):
            y = torch.randn(b, width, s, s).contiguous(memory_format=mf).requires_grad_()
            g = torch.randn(b, 1, s, s)
            fns[f"conv {name}"] = lambda y=y, g=g: conv(y).backward(g)
            fns[f"matmul {name}"] = lambda y=y, g=g: bam_module.final_1x1(
                y, conv.weight, conv.bias
            ).backward(g)
        r = _interleaved(fns, reps)
        rows.append(
            f"| {b}x{width}x{s}x{s} | {r['conv NCHW']:.2f} | {r['matmul NCHW']:.2f} | "
            f"{r['conv NCHW'] / r['matmul NCHW']:.2f}x | {r['conv CL']:.2f} | "
            f"{r['matmul CL']:.2f} | {r['conv CL'] / r['matmul CL']:.2f}x |"
        )
        print(rows[-1], flush=True)
    return rows


def block_rows(reps: int) -> list[str]:
    rows = []
    # (batch, channels, size): gate widths 2, 4, 8 (narrow) and 16 (not: the rule is idle).
    for b, c, s in ((64, 32, 32), (64, 64, 16), (32, 128, 28), (8, 256, 56)):
        for fmt_name, mf in (("NCHW", torch.contiguous_format), ("channels_last", CL)):
            block = BAM(c).to(memory_format=mf)
            x = torch.randn(b, c, s, s).contiguous(memory_format=mf)
            xg = x.clone().requires_grad_()
            dy = torch.randn_like(x)

            def timed(rule: bool, mode: str):
                def run():
                    off = mock.patch.object(bam_module, "narrow", lambda w: False)
                    with off if not rule else contextlib.nullcontext():
                        if mode == "train":
                            block.train()
                            block(xg).backward(dy)
                        else:
                            block.eval()
                            with torch.no_grad():
                                block(x)

                return run

            r = {}
            for mode in ("train", "eval"):  # each mode in its own turns: a training step
                # frees buffers that change what the next call pays (RESULTS_page_faults.md)
                r.update(_interleaved({f"{mode} {v}": timed(v, mode) for v in (True, False)}, reps))
            rows.append(
                f"| {b}x{c}x{s}x{s} | {c // 16} | {fmt_name} | {r['train True']:.2f} | "
                f"{r['train False']:.2f} | {r['train False'] / r['train True']:.2f}x | "
                f"{r['eval True']:.2f} | {r['eval False']:.2f} | "
                f"{r['eval False'] / r['eval True']:.2f}x |"
            )
            print(rows[-1], flush=True)
    return rows


def main(reps: int = 40) -> None:
    torch.set_num_threads(2)
    load_before = loadavg()
    bn = batchnorm_rows(reps)
    final = final_conv_rows(reps)
    blocks = block_rows(reps)
    write_results(
        OUT,
        "Narrow gates and the channels_last layout (CPU)",
        load_before,
        [
            f"- float32; minimum ms of {reps} calls after two warm-up calls, the variants of a row "
            "timed in turns",
            "",
            "## PyTorch's BatchNorm2d alone: NCHW against channels_last maps",
            "",
            "| map | train fwd+bwd NCHW | train fwd+bwd CL | CL / NCHW | eval NCHW | eval CL | CL / NCHW |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *bn,
            "",
            "## The gate's final 1x1 conv (h channels to one), forward+backward",
            "",
            "| map | F.conv2d NCHW | matmul NCHW | speed-up | F.conv2d CL | matmul CL | speed-up |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *final,
            "",
            "## One BAM block with the narrow-gate rule and without it",
            "",
            "The rule: gates of width `C // r` below 16 compute the 1x1 reduce as an NCHW matmul and, "
            "in training, keep their maps NCHW in a channels_last model too. The model and its "
            "input are in the layout of the third column. Train: forward+backward; eval: forward "
            "under no_grad.",
            "",
            "| input | C // r | layout | train, rule ms | train, no rule ms | speed-up | eval, rule ms | eval, no rule ms | speed-up |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *blocks,
        ],
    )


if __name__ == "__main__":
    main()
