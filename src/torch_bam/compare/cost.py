"""What each variant costs in measured time, and BAM's floor beside it.

:func:`measure` times a training step (forward, backward, optimizer step) and an inference
(forward only) of several networks in interleaved turns, in one process, on the same batch:
the reference, every variant, and where asked a BAM network's floor
(:func:`torch_bam.floor.bam_floor`: each BAM replaced by its convolutions and one gate pass).
Each turn runs every network once, in an order that rotates from turn to turn, so a machine
that gets busier or quieter slows all of them alike; each ratio is the median over turns of
that turn's ratio.

:func:`sentence` says what the numbers mean: BAM's share of the multiply-adds, how much longer
its steps take, and how much of that the floor (BAM's arithmetic and its one gate pass) already
takes; the rest is the implementation's overhead.
"""

from __future__ import annotations

import time
from statistics import median

import torch
from torch import Tensor, nn

__all__ = ["COST_TURNS", "FLOOR", "measure", "sentence"]

FLOOR = "floor"  # the name of the floor network in :func:`measure`'s result
COST_TURNS = 10  # the commands' default turns: a few seconds at their default sizes
KINDS = ("train_step", "inference")


def _timed(fn, sync=None) -> float:
    if sync is not None:  # a GPU runs asynchronously: time what it did, not what was queued
        sync()
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def measure(
    networks: dict[str, nn.Module], x: Tensor, y: Tensor, turns: int = COST_TURNS, warmup: int = 2
) -> dict:
    """Seconds per training step and per inference of each network, in interleaved turns.

    ``networks``: name -> network, the baseline first (every ratio is to it). Each network is
    trained with its own SGD optimizer on ``x``, ``y`` (its weights change: pass copies). The
    first ``warmup`` turns are not recorded. Returns ``{"batch", "turns", "networks": {name:
    {"train_step_s": [...], "inference_s": [...]}}, "ratios": {kind: {name: median of per-turn
    ratios}}}``, ratios for every network but the baseline.
    """
    if turns < 1 or warmup < 0:
        raise ValueError(f"measure: turns must be 1 or more and warmup 0 or more, got {turns}.")
    names = list(networks)
    criterion = nn.CrossEntropyLoss()
    optimizers = {
        n: torch.optim.SGD(networks[n].parameters(), lr=1e-3, momentum=0.9) for n in names
    }

    def train_step(name: str) -> None:
        net = networks[name].train()
        optimizers[name].zero_grad(set_to_none=True)
        criterion(net(x), y).backward()
        optimizers[name].step()

    def inference(name: str) -> None:
        net = networks[name].eval()
        with torch.no_grad():
            net(x)

    sync = torch.cuda.synchronize if x.is_cuda else None
    record = {n: {f"{k}_s": [] for k in KINDS} for n in names}
    for turn in range(warmup + turns):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            step = _timed(lambda n=name: train_step(n), sync)
            infer = _timed(lambda n=name: inference(n), sync)
            if turn >= warmup:
                record[name]["train_step_s"].append(step)
                record[name]["inference_s"].append(infer)
    base = names[0]
    ratios = {
        kind: {
            n: median(
                [
                    t / b
                    for t, b in zip(record[n][f"{kind}_s"], record[base][f"{kind}_s"], strict=True)
                ]
            )
            for n in names[1:]
        }
        for kind in KINDS
    }
    for n in names:
        for kind in KINDS:
            record[n][f"median_{kind}_s"] = median(record[n][f"{kind}_s"])
    return {"batch": int(x.shape[0]), "turns": turns, "networks": record, "ratios": ratios}


def sentence(cost: dict, baseline: str, bam: str, macs_ratio: float) -> str:
    """The cost in words, from :func:`measure`'s result and the MACs ratio (BAM / baseline)."""
    train, infer = cost["ratios"]["train_step"], cost["ratios"]["inference"]
    text = (
        f"BAM adds {100 * (macs_ratio - 1):.1f}% to the multiply-adds of {baseline} "
        f"({macs_ratio:.3f}x). On this machine, in {cost['turns']} interleaved turns at batch "
        f"{cost['batch']}, a training step of {bam} took {train[bam]:.2f}x as long as "
        f"{baseline}'s, and an inference {infer[bam]:.2f}x. A BAM that computed only its "
        f"convolutions and one gate pass (its floor) would take {train[FLOOR]:.2f}x and "
        f"{infer[FLOOR]:.2f}x"
    )
    overhead = train[bam] - train[FLOOR]
    if overhead > 0:
        text += (
            f": the remaining {overhead:.2f}x of a training step is overhead of the "
            "implementation (the pooling, the channel MLP, the BatchNorms and ReLUs, and the "
            "passes between them, which on small maps cost more than their arithmetic)."
        )
    else:
        text += (
            ": the BAM network is no slower than its floor, so what BAM costs here is its "
            "arithmetic and its one gate pass."
        )
    if train[FLOOR] - 1 > 2 * max(macs_ratio - 1, 0.0):
        text += (
            f" The floor itself costs more than its share of the multiply-adds: BAM's small "
            f"convolutions run further from the machine's peak speed than {baseline}'s larger "
            f"ones."
        )
    return text
