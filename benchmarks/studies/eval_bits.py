"""What bitwise eval outputs cost on CPU: the spatial gate's 1x1 convs as matmuls, or as convs.

timm's FX test requires a traced network's output to equal the eager output bit for bit
(``torch.all(fx_outputs == outputs)``). A trace records the modules (the 1x1 convs as convs);
the CPU room computed them in eager mode as batched matmuls (``torch_bam.cpu.layers``), which
round differently. Since this study the room computes them as convs in eval (the matmuls stay in
training). This script times inference (eval, no grad), in the same turns: the network or block
without BAM where there is one, BAM with the 1x1 convs as convs (as shipped), and BAM with the
matmuls (the code before, patched in), and checks which of the two gives the traced output
exactly.

    PYTHONPATH=src python benchmarks/studies/eval_bits.py   # writes RESULTS_eval_bits.md

The decision (convs in eval) does not wait on the timing: only the convs give the traced
output exactly (the last column), which timm's contract requires, and the matmuls stay where
they were measured to help, in training. The timing says what the contract costs; on a machine
shared with other jobs its intervals are wide (see the load averages in the results file), so
rerun it on a quiet one before reading more than the sign into a ratio.
"""

# Tables are long lines; lambdas are timed inside the loop that defines them:
# ruff: noqa: E501, B023

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch_bam.cpu.block as cpu_block  # noqa: E402
from benchmarks._timer import measure  # noqa: E402
from benchmarks.studies._common import loadavg, write_results  # noqa: E402
from torch_bam import BAM, create_model  # noqa: E402
from torch_bam.cpu.layers import final_1x1, narrow_layout, reduce_1x1  # noqa: E402

TURNS = 15
# (C, r, B, H): the ImageNet ResNets' three BAMs; bam_small_cnn's two (narrow gates, r = 8).
BLOCKS = [(256, 16, 8, 56), (512, 16, 8, 28), (1024, 16, 8, 14), (32, 8, 64, 32), (64, 8, 64, 16)]
NETWORKS = [("resnet18", 8, 64), ("small_cnn", 64, 32)]
_shipped = cpu_block._spatial_forward


def _matmuls(sp, x, training, kept=None):
    """The spatial gate as the room computed it in eval before: the 1x1 convs as matmuls."""
    reduce, final = sp[0], sp[-1]
    y = narrow_layout(reduce_1x1(x, reduce.weight, reduce.bias), training)
    for layer in sp[1:-1]:
        y = narrow_layout(layer(y), training)
    return final_1x1(y, final.weight, final.bias)


def _call(model, x, spatial):
    def run():
        with torch.no_grad(), mock.patch.object(cpu_block, "_spatial_forward", spatial):
            return model(x)

    return run


def _bitwise(model, x, spatial) -> bool:
    with torch.no_grad():
        traced = torch.fx.symbolic_trace(model)(x)
    return torch.equal(_call(model, x, spatial)(), traced)


def _table(title, ref, model, x, body):
    fns = {"BAM, 1x1 convs as convs (shipped)": _call(model, x, _shipped)}
    fns["BAM, 1x1 convs as matmuls (before)"] = _call(model, x, _matmuls)
    if ref is not None:
        fns["without BAM"] = _call(ref, x, _shipped)
    times = measure(fns, TURNS)
    conv, mm = list(fns)[:2]
    body += [
        f"## {title}",
        "",
        "| variant | ms (median) | / matmuls (median [95% CI]) | output == FX trace's |",
        "|---|---|---|---|",
    ]
    spatial = {conv: _shipped, mm: _matmuls}
    for k in fns:
        exact = str(_bitwise(model, x, spatial[k])) if k in spatial else "-"
        body.append(f"| {k} | {times.median(k):.2f} | {times.ratio(k, mm)} | {exact} |")
    if ref is not None:
        body.append(
            f"\nBAM's own cost, convs / matmuls: ((shipped - without) / (before - without)) = "
            f"{(times.median(conv) - times.median('without BAM')) / max(times.median(mm) - times.median('without BAM'), 1e-9):.3f} (medians)"
        )
    print(title, times.ratio(conv, mm))
    body.append("")


def main() -> None:
    torch.set_num_threads(2)
    before = loadavg()
    body = [
        f"- float32, eval, no grad; each table's calls timed in {TURNS} turns, each turn in a random order (`benchmarks/_timer.py`); ratios are medians of per-turn ratios with a 95% interval",
        "",
    ]
    for c, r, b, h in BLOCKS:
        torch.manual_seed(0)
        block = BAM(c, reduction_ratio=r).eval()
        x = torch.randn(b, c, h, h)
        _table(
            f"One block, C={c}, r={r} (gate width {c // r}), {b}x{c}x{h}x{h}", None, block, x, body
        )
    for name, b, size in NETWORKS:
        torch.manual_seed(0)
        base = create_model(name, num_classes=10).eval()
        bam = create_model(f"bam_{name}", num_classes=10).eval()
        x = torch.randn(b, 3, size, size)
        _table(f"{name} and bam_{name}, B={b}, {size}x{size}, inference", base, bam, x, body)
    write_results(
        Path(__file__).with_name("RESULTS_eval_bits.md"),
        "Bitwise eval outputs on CPU: the spatial gate's 1x1 convs as convs or as matmuls",
        before,
        body,
    )


if __name__ == "__main__":
    main()
