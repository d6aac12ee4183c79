"""Why BAM costs far more than its MACs in small networks on CPU, and a mixed-layout fix.

Run from the repository root:  PYTHONPATH=src python benchmarks/studies/narrow_gate_layout.py
Writes benchmarks/studies/RESULTS_narrow_gate_layout.md.

``bam_small_cnn`` (the demo's network, B=64, 32x32) has two BAMs: BAM(32, r=8) on 32x32 maps
(gate width 4, under the CPU room's ``MIN_HIDDEN``: plain autograd) and BAM(64, r=8) on 16x16
maps (width 8: the memory-saving path). Both gates are "narrow" (under 16 channels), so in
training the CPU room keeps their maps NCHW, because PyTorch's CPU BatchNorm is several times
slower on narrow channels_last maps (``RESULTS_narrow_gate.md``). This script measures:

1. the pieces of a narrow spatial gate by layout, forward+backward: BatchNorm2d, the dilated
   3x3 conv, and the conv's input and weight gradients alone (``aten.convolution_backward``);
2. where a training step's time goes: ``torch.profiler``'s self CPU time by op, bam_small_cnn
   minus small_cnn;
3. each BAM of bam_small_cnn alone, forward+backward, at its place in the network: the
   current code, the prototype (below), every map channels_last, and the block's floor
   (``torch_bam.floor``);
4. the whole network, training step and inference: small_cnn, bam_small_cnn as it is, with
   the prototype, and its floor, in the same turns.

The prototype changes two rules of the CPU room, both by map size:

- "mixed layout": a narrow gate in CPU training keeps each BatchNorm's input NCHW (where
  BatchNorm is fast) but gives each dilated 3x3 conv a channels_last input (where the conv's
  input gradient is fast), one copy of a C/r-channel map before each; on maps of at least
  32x32 only (``LARGE_MAP``), as on smaller maps the copies cost more than they save;
- the memory-saving path only on maps of at least 32x32: on smaller maps its recompute costs
  more than plain autograd (section 3, and ``RESULTS_block_autograd.md``).

``mixed_layout_forward`` and ``saving_on_large_maps`` below are the whole change, written as a
replacement for ``SpatialGate.forward`` in CPU training and for ``torch_bam.cpu.block.can_use``;
the timings patch them in with ``unittest.mock``. Times: minimum over the turns (other jobs only
add time) and the median of the per-turn ratios with its 95% interval.
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch_bam.cpu.block as cpu_block  # noqa: E402
from benchmarks._timer import measure  # noqa: E402
from benchmarks.studies._common import loadavg, write_results  # noqa: E402
from torch_bam import BAM, SpatialGate, create_model  # noqa: E402
from torch_bam.cpu.layers import final_1x1, narrow, reduce_1x1  # noqa: E402
from torch_bam.floor import bam_floor  # noqa: E402

OUT = Path(__file__).with_name("RESULTS_narrow_gate_layout.md")
CL = torch.channels_last
B = 64
QUICK = os.environ.get("QUICK") == "1"


# ----------------------------------------------------------------------------- the prototype
def mixed_layout_forward(self: SpatialGate, x: torch.Tensor) -> torch.Tensor:
    """SpatialGate.forward with the mixed-layout rule for narrow gates in CPU training: NCHW
    into each BatchNorm, channels_last into each 3x3 conv. Otherwise the current forward."""
    gate = self.gate_s
    hidden = gate.gate_s_conv_reduce0.out_channels
    if not (self.training and x.device.type == "cpu" and narrow(hidden)):
        return _current_forward(self, x)
    conv = gate.gate_s_conv_reduce0
    y = reduce_1x1(x, conv.weight, conv.bias)  # NCHW for narrow gates
    for name, layer in list(gate.named_children())[1:]:
        if name == "gate_s_conv_final":
            return final_1x1(y, layer.weight, layer.bias)
        if isinstance(layer, nn.BatchNorm2d):
            y = y.contiguous()
        elif isinstance(layer, nn.Conv2d):
            y = y.contiguous(memory_format=CL)
        y = layer(y)
    return y


_current_forward = SpatialGate.forward


def all_channels_last_forward(self: SpatialGate, x: torch.Tensor) -> torch.Tensor:
    """Every map of the gate channels_last (no narrow rule), for comparison."""
    gate = self.gate_s
    conv = gate.gate_s_conv_reduce0
    y = F.conv2d(x.contiguous(memory_format=CL), conv.weight, conv.bias)
    for name, layer in list(gate.named_children())[1:]:
        if name == "gate_s_conv_final":
            return final_1x1(y, layer.weight, layer.bias)
        y = layer(y.contiguous(memory_format=CL))
    return y


# Maps of at least this many pixels: where the NCHW conv input gradient is slow (section 1)
# and where the memory-saving path pays for its recompute (RESULTS_block_autograd.md).
LARGE_MAP = 32 * 32


def mixed_large_maps_forward(self: SpatialGate, x: torch.Tensor) -> torch.Tensor:
    """The mixed layout on large maps only; the current forward on smaller ones."""
    if x.shape[-2] * x.shape[-1] >= LARGE_MAP:
        return mixed_layout_forward(self, x)
    return _current_forward(self, x)


_can_use = cpu_block.can_use


def saving_on_large_maps(block, x) -> bool:
    """The CPU room's memory-saving path only on large maps (plain autograd on small ones)."""
    return _can_use(block, x) and x.shape[-2] * x.shape[-1] >= LARGE_MAP


# name: (SpatialGate.forward, the CPU room's can_use)
VARIANTS = {
    "current": (_current_forward, _can_use),
    "mixed layout": (mixed_layout_forward, _can_use),
    "all channels_last": (all_channels_last_forward, _can_use),
    "plain autograd (no memory-saving path)": (_current_forward, lambda block, x: False),
    "prototype: mixed layout and memory-saving path on >= 32x32 maps only": (
        mixed_large_maps_forward,
        saving_on_large_maps,
    ),
}
PROTOTYPE = "prototype: mixed layout and memory-saving path on >= 32x32 maps only"


@contextlib.contextmanager
def variant(name: str):
    forward, can_use = VARIANTS[name]
    with (
        mock.patch.object(SpatialGate, "forward", forward),
        mock.patch.object(cpu_block, "can_use", can_use),
    ):
        yield


def in_variant(name, fn):
    def run():
        with variant(name):
            fn()

    return run


def _min(t, k):
    return min(t.ms[k])


# ----------------------------------------------------------------------------- 1. the pieces
def pieces(turns):
    rows = []
    for c, side, r in ((32, 32, 8), (64, 16, 8)):
        h = c // r
        fns = {}
        for fmt, mf in (("NCHW", torch.contiguous_format), ("channels_last", CL)):
            t = torch.randn(B, h, side, side).contiguous(memory_format=mf)
            g = torch.randn_like(t)
            tg = t.clone().requires_grad_()
            bn = nn.BatchNorm2d(h).train()
            conv = nn.Conv2d(h, h, 3, padding=4, dilation=4).to(memory_format=mf)
            w = conv.weight.detach()

            def cb(mask, g=g, t=t, w=w):
                return lambda: torch.ops.aten.convolution_backward(
                    g, t, w, [h], [1, 1], [4, 4], [4, 4], False, [0, 0], 1, mask
                )

            fns[f"BatchNorm2d fwd+bwd|{fmt}"] = lambda bn=bn, tg=tg, g=g: bn(tg).backward(g)
            fns[f"dilated 3x3 conv fwd+bwd|{fmt}"] = lambda c=conv, tg=tg, g=g: c(tg).backward(g)
            fns[f"  its input gradient alone|{fmt}"] = cb([True, False, False])
            fns[f"  its weight+bias gradient alone|{fmt}"] = cb([False, True, True])
            # For scale: the network's own 3x3 conv at this place, C -> C: (C / h)^2 = 64x
            # the MACs of the gate's dilated conv.
            xs = torch.randn(B, c, side, side).contiguous(memory_format=mf).requires_grad_()
            stage = nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=mf)
            gs = torch.randn_like(xs)
            fns[f"for scale: the network's 3x3 conv {c}->{c} fwd+bwd (64x the MACs)|{fmt}"] = (
                lambda m=stage, xs=xs, gs=gs: m(xs).backward(gs)
            )
            fns[f"copy to the other layout|{fmt}"] = lambda t=t, mf=mf: t.contiguous(
                memory_format=CL if mf == torch.contiguous_format else torch.contiguous_format
            )
        t = measure(fns, turns, min_s=0.3, max_turns=40)
        for piece in dict.fromkeys(k.split("|")[0] for k in fns):
            a, b = _min(t, f"{piece}|NCHW"), _min(t, f"{piece}|channels_last")
            rows.append(
                f"| BAM({c}) at {side}x{side}: [{B}, {h}, {side}, {side}] | {piece} | {a:.2f} | {b:.2f} | {a / b:.1f} |"
            )
        print(*rows[-6:], sep="\n", flush=True)
    return rows


# ----------------------------------------------------------------------------- 2. the profile
def profile_rows():
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(B, 3, 32, 32)
    y = torch.randint(0, 10, (B,))
    per_op = {}
    totals = {}
    for name in ("small_cnn", "bam_small_cnn"):
        m = create_model(name).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()

        for _ in range(3):
            step()
        runs = []
        for _ in range(3):  # the least-disturbed of three profiled runs of 3 steps
            with profile(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(3):
                    step()
            ev = {e.key: (e.self_cpu_time_total / 3 / 1e3, e.count / 3) for e in p.key_averages()}
            runs.append((sum(v[0] for v in ev.values()), ev))
        totals[name], per_op[name] = min(runs, key=lambda r: r[0])
    base, bam = per_op["small_cnn"], per_op["bam_small_cnn"]
    diff = {k: bam[k][0] - base.get(k, (0.0, 0))[0] for k in bam}
    rows = [
        f"| {k} | {base.get(k, (0.0, 0))[0]:.1f} ({base.get(k, (0, 0))[1]:.0f}) | {bam[k][0]:.1f} ({bam[k][1]:.0f}) | {d:+.1f} |"
        for k, d in sorted(diff.items(), key=lambda kv: -kv[1])[:14]
    ]
    rows.append(
        f"| all ops | {totals['small_cnn']:.1f} | {totals['bam_small_cnn']:.1f} | {totals['bam_small_cnn'] - totals['small_cnn']:+.1f} |"
    )
    print(*rows, sep="\n", flush=True)
    return rows


# ----------------------------------------------------------------------------- 3. per BAM
def per_block(turns):
    rows = []
    torch.manual_seed(0)
    net = create_model("bam_small_cnn")
    for i, side in ((0, 32), (1, 16)):
        block: BAM = net.bams[i]
        c = block.channels
        x = torch.randn(B, c, side, side).requires_grad_()
        dy = torch.randn_like(x)
        floor = bam_floor(block).train()
        block.train()
        fns = {name: in_variant(name, lambda: block(x).backward(dy)) for name in VARIANTS}
        fns["floor"] = lambda: floor(x).backward(dy)
        t = measure(fns, turns, min_s=0.5, max_turns=40)
        for name in fns:
            r = t.ratio(name, "current")
            rows.append(
                f"| BAM({c}) at {side}x{side}, gate width {c // 8}, fwd+bwd | {name} | {_min(t, name):.2f} | {statistics.median(t.ms[name]):.2f} | {r} |"
            )
        print(*rows[-len(fns) :], sep="\n", flush=True)
        # Inference: the prototype changes nothing there; the current block against its floor.
        block_eval, floor_eval = copy.deepcopy(block).eval(), bam_floor(block).eval()
        xe = x.detach()
        fns = {"current": lambda: block_eval(xe), "floor": lambda: floor_eval(xe)}
        with torch.no_grad():
            t = measure(fns, turns, min_s=0.5, max_turns=40)
        for name in fns:
            rows.append(
                f"| BAM({c}) at {side}x{side}, inference | {name} | {_min(t, name):.2f} | {statistics.median(t.ms[name]):.2f} | {t.ratio(name, 'current')} |"
            )
        print(*rows[-2:], sep="\n", flush=True)
    return rows


def block_profile():
    """Self CPU time by op of BAM(32)'s forward+backward at 32x32 (the plain path)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    block = create_model("bam_small_cnn").bams[0].train()
    x = torch.randn(B, 32, 32, 32).requires_grad_()
    dy = torch.randn_like(x)
    for _ in range(3):
        block(x).backward(dy)
    runs = []
    for _ in range(3):
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(5):
                block(x).backward(dy)
        ev = {e.key: (e.self_cpu_time_total / 5 / 1e3, e.count / 5) for e in p.key_averages()}
        runs.append((sum(v[0] for v in ev.values()), ev))
    total, ev = min(runs, key=lambda r: r[0])
    rows = [
        f"| {k} | {ms:.2f} | {n:.0f} | {ms / total:.0%} |"
        for k, (ms, n) in sorted(ev.items(), key=lambda kv: -kv[1][0])[:10]
    ]
    rows.append(f"| all ops | {total:.2f} | {sum(n for _, n in ev.values()):.0f} | 100% |")
    print(*rows, sep="\n", flush=True)
    return rows


# ----------------------------------------------------------------------------- 4. the network
def network(turns):
    torch.manual_seed(0)
    x = torch.randn(B, 3, 32, 32)
    y = torch.randint(0, 10, (B,))
    base = create_model("small_cnn")
    bam = create_model("bam_small_cnn")
    proto = create_model("bam_small_cnn")
    proto.load_state_dict(bam.state_dict())
    models = {"small_cnn": (base, "current"), "bam_small_cnn": (bam, "current"),
              "bam_small_cnn, prototype": (proto, PROTOTYPE),
              "floor": (bam_floor(bam), "current")}  # fmt: skip
    rows = []
    for mode in ("train step", "inference"):
        fns = {}
        for k, (m, v) in models.items():
            m.train(mode == "train step")
            if mode == "train step":
                opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

                def step(m=m, opt=opt):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(m(x), y).backward()
                    opt.step()

                fns[k] = in_variant(v, step)
            else:

                def infer(m=m):
                    with torch.no_grad():
                        m(x)

                fns[k] = in_variant(v, infer)
        t = measure(fns, turns)
        for k in fns:
            rows.append(
                f"| {mode} | {k} | {_min(t, k):.1f} | {t.median(k):.1f} | {t.ratio(k, 'small_cnn')} | {t.ratio(k, 'bam_small_cnn')} |"
            )
        print(*rows[-len(fns) :], sep="\n", flush=True)
    return rows


def main():
    torch.set_num_threads(2)
    load_before = loadavg()
    q = 0.5 if QUICK else 1.0
    p = pieces(round(12 * q))
    prof = profile_rows()
    blocks = per_block(round(16 * q))
    bprof = block_profile()
    net = network(round(40 * q))
    write_results(
        OUT,
        "BAM in a small network on CPU: where the time goes, and a mixed-layout narrow gate",
        load_before,
        [
            "- float32, B=64, torch.set_num_threads(2); the functions of each table timed in turns, each turn in a random order (`benchmarks/_timer.py`)",
            "- the machine was shared with other jobs: read the minimum times and the per-turn ratios, not single medians",
            "",
            "### 1. The pieces of a narrow spatial gate, forward+backward, ms (minimum over the turns)",
            "",
            "| map | piece | NCHW | channels_last | NCHW / channels_last |",
            "| --- | --- | --- | --- | --- |",
            *p,
            "",
            "### 2. A training step by op: self CPU time, ms per step (calls), least-disturbed of three profiled runs",
            "",
            "| op | small_cnn | bam_small_cnn | difference |",
            "| --- | --- | --- | --- |",
            *prof,
            "",
            "### 3. Each BAM of bam_small_cnn alone, at its place in the network",
            "",
            "| block | variant | min ms | median ms | / current (median [95% CI] of per-turn ratios) |",
            "| --- | --- | --- | --- | --- |",
            *blocks,
            "",
            "BAM(32)'s forward+backward by op (self CPU time, ms per call, least-disturbed of three profiled runs of 5):",
            "",
            "| op | ms | calls | share |",
            "| --- | --- | --- | --- |",
            *bprof,
            "",
            "### 4. The whole network, B=64, 32x32 (the demo's)",
            "",
            "| pass | model | min ms | median ms | / small_cnn | / bam_small_cnn |",
            "| --- | --- | --- | --- | --- | --- |",
            *net,
        ],
    )


if __name__ == "__main__":
    main()
