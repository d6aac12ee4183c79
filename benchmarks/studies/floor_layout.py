"""Is the floor the floor? The small-network cost targets against the best layout for BAM's
dilated convolutions.

``torch_bam.floor.bam_floor`` runs each BAM's dilated 3x3 convs in the network's layout (NCHW
here). PyTorch's CPU conv on maps of 4-8 channels can be much faster, or slower, in
channels_last, depending on the CPU. This study times, in the same turns, the network without
BAM, with BAM, its floor as shipped, and the floor with the dilated convs in channels_last, and
takes each turn's faster floor: if even that is above a target, no implementation that uses
PyTorch's CPU convolutions meets it. It also times each BAM without its channel gate (the
spatial gate with its BatchNorms and ReLUs, and the gate pass): work every BAM does, so a floor
for implementations that run BatchNorm as PyTorch's op.

    PYTHONPATH=src python benchmarks/studies/floor_layout.py   # writes RESULTS_floor_layout.md
"""

# Tables are long lines; lambdas are timed inside the loop that defines them:
# ruff: noqa: E501, B023

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks._timer import measure  # noqa: E402
from benchmarks.studies._common import loadavg, write_results  # noqa: E402
from torch_bam import BAM, bam_gate, create_model  # noqa: E402
from torch_bam.floor import BAMFloor, _conv_1x1, bam_floor  # noqa: E402

TURNS = 30
# (network, batch, image side, the targets of benchmarks/RESULTS.md: train step, inference)
ROWS = [("small_cnn", 64, 32, 1.15, 1.10), ("resnet18", 8, 64, 1.08, 1.08)]


class FloorChannelsLast(BAMFloor):
    """The floor with its dilated 3x3 convs in channels_last (the 1x1s as matmuls on NCHW)."""

    def forward(self, x):
        s = x
        for conv in self.convs:
            if conv.kernel_size == (1, 1):
                s = _conv_1x1(s.contiguous(), conv)
            else:
                s = conv(s.contiguous(memory_format=torch.channels_last))
        zeros = s.new_zeros(x.shape[0], x.shape[1])
        return bam_gate(x, zeros, s.to(x.dtype).contiguous(), self.combine)


class SpatialGateOnly(nn.Module):
    """A BAM without its channel gate: the spatial gate's layers as the module runs them
    (convs, BatchNorms, ReLUs), the 1x1s as matmuls, and one gate pass. A BAM computes all of
    this and more (the pool and the MLP), so it is a floor for any implementation that runs
    BatchNorm in training as PyTorch's own op."""

    def __init__(self, block):
        super().__init__()
        self.layers = block.spatial_att.gate_s
        self.combine = block.combine

    def forward(self, x):
        s = x
        for layer in self.layers:
            s = _conv_1x1(s, layer) if type(layer) is nn.Conv2d and layer.kernel_size == (1, 1) else layer(s)
        zeros = s.new_zeros(x.shape[0], x.shape[1])
        return bam_gate(x, zeros, s.to(x.dtype), self.combine)


def _spatial_only(module):
    module = copy.deepcopy(module)

    def replace(m):
        for name, child in m.named_children():
            if isinstance(child, BAM):
                setattr(m, name, SpatialGateOnly(child))
            else:
                replace(child)

    replace(module)
    return module


def _floor_cl(net):
    floor = bam_floor(net)
    for m in floor.modules():
        if type(m) is BAMFloor:
            m.__class__ = FloorChannelsLast
    return floor


def _step(model, x, t):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), t).backward()
        opt.step()

    return step


def _infer(model, x):
    def run():
        with torch.no_grad():
            model(x)

    return run


def main() -> None:
    torch.set_num_threads(2)
    before = loadavg()
    body = [
        f"- float32, NCHW; each table's six calls timed in {TURNS} turns, each turn in a random order (`benchmarks/_timer.py`); ratios are medians of per-turn ratios with a 95% interval",
        "- floor: `torch_bam.floor.bam_floor` as shipped (dilated convs in the network's layout); floor, channels_last: the same with its dilated convs in channels_last; best floor: each turn's faster of the two; spatial gate only: each BAM without its channel gate (pool and MLP) but with the spatial gate's BatchNorms and ReLUs, which a BAM also computes",
        "",
    ]
    for name, b, size, t_train, t_infer in ROWS:
        torch.manual_seed(0)
        x = torch.randn(b, 3, size, size)
        t = torch.randint(0, 10, (b,))
        base = create_model(name, num_classes=10)
        bam = create_model(f"bam_{name}", num_classes=10)
        nets = {
            name: base,
            f"bam_{name}": bam,
            "floor": bam_floor(bam),
            "floor, channels_last": _floor_cl(bam),
            "spatial gate only (with its BatchNorms and ReLUs)": _spatial_only(bam),
        }
        body += [
            f"## {name} and bam_{name}, B={b}, {size}x{size}",
            "",
            f"| pass | model | ms (median) | / {name} (median [95% CI]) | target |",
            "|---|---|---|---|---|",
        ]
        for mode, target in (("train step", t_train), ("inference", t_infer)):
            for m in nets.values():
                m.train(mode == "train step")
            fns = {k: (_step(m, x, t) if mode == "train step" else _infer(m, x)) for k, m in nets.items()}
            times = measure(fns, TURNS)
            times.ms["best floor"] = times.per_turn_best("floor", "floor, channels_last")
            for k in [*nets, "best floor"]:
                if k == name:
                    continue
                r = times.ratio(k, name)
                verdict = {True: "met", False: "NOT met", None: "unresolved"}[r.verdict(target)]
                body.append(f"| {mode} | {k} | {times.median(k):.1f} | {r} | <= {target} ({verdict}) |")
            print(f"{name} {mode}: best floor / {name} {times.ratio('best floor', name)}")
        body += [""]
    write_results(
        Path(__file__).with_name("RESULTS_floor_layout.md"),
        "BAM's floor in small networks on CPU, with the best layout for its dilated convs",
        before,
        body,
    )


if __name__ == "__main__":
    main()
