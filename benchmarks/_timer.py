"""The one timer of the benchmarks, and the statistics its verdicts use.

``measure(fns)`` calls every function of ``fns`` (the measured things and their references)
after warm-up, in turns: each turn calls each function once, in a new (seeded) random order, so
a drift in the machine's load hits all of them alike and no function always follows the same
other (a call's time depends on what ran just before it: the allocator's state, the caches).
Turn ``i`` of every function ran under about the same load, so two functions compare by the
median of their per-turn ratios (``ratio``), with a distribution-free 95% confidence interval.

On CUDA each call is timed with a pair of CUDA events. ``host_time=True`` (training steps,
blocks) waits for the GPU to go idle before each call, so launch and Python time count as they
do in training; ``host_time=False`` (single kernels) queues each call behind an L2 flush, as
``triton.testing.do_bench`` does, so only the kernel's own time counts.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Times:
    """Milliseconds of every timed call: ``ms[name][i]`` is ``name``'s call in turn ``i``."""

    ms: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.ms[name])

    def spread(self, name: str) -> tuple[float, float]:
        """The interquartile range of ``name``'s calls (min, max under 4 turns)."""
        v = sorted(self.ms[name])
        if len(v) < 4:
            return v[0], v[-1]
        q = statistics.quantiles(v, n=4)
        return q[0], q[2]

    def ratio(self, name: str, ref: str) -> Ratio:
        """Median over turns of ``time(name) / time(ref)`` in the same turn, with its CI."""
        return Ratio(*median_ci([a / b for a, b in zip(self.ms[name], self.ms[ref], strict=True)]))

    def per_turn_best(self, *names: str) -> list[float]:
        """Each turn's fastest call among ``names`` (e.g. the best of two layouts)."""
        return [min(ts) for ts in zip(*(self.ms[k] for k in names), strict=True)]


@dataclass
class Ratio:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        if math.isinf(self.low):
            return f"{self.value:.3f} [too few turns for an interval]"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def verdict(self, target: float, at_most: bool = True) -> bool | None:
        """True / False only when the whole interval is on one side of the target; None
        ("unresolved") when it contains the target."""
        if (self.high <= target) if at_most else (self.low >= target):
            return True
        if (self.low > target) if at_most else (self.high < target):
            return False
        return None


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Median of ``values`` with a distribution-free confidence interval for it (the k-th
    smallest and k-th largest values, k from the binomial(n, 1/2) distribution):
    ``(median, low, high)``; the interval is infinite under 6 values."""
    r = sorted(values)
    n, k, cdf = len(r), 0, 0.0
    while cdf + math.comb(n, k) / 2**n <= (1 - level) / 2:
        cdf += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return statistics.median(r), -math.inf, math.inf
    return statistics.median(r), r[k - 1], r[n - k]


class _L2Flush:
    """Writes a buffer larger than the L2 cache (as triton.testing.do_bench does)."""

    def __init__(self, device: str):
        import torch

        self.buf = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def measure(
    fns: dict[str, Callable[[], object]],
    turns: int,
    *,
    device: str = "cpu",
    warmup: int = 2,
    min_s: float = 0.0,
    max_turns: int | None = None,
    host_time: bool = True,
    seed: int = 0,
    before: dict[str, Callable[[], object]] | None = None,
) -> Times:
    """Time ``fns`` in ``turns`` turns after ``warmup`` calls of each (the first call also
    compiles, under torch.compile or Triton). More turns, up to ``max_turns``, while the turns
    so far took under ``min_s`` seconds per function: fast calls get more samples.

    ``before[name]``, if given, runs before every call of ``name``, warm-up included, and is
    not timed: it restores what an in-place call overwrote, so that every call sees the same
    input."""
    before = before or {}

    def prepare(k: str) -> None:
        if k in before:
            before[k]()

    for k, fn in fns.items():
        for _ in range(warmup):
            prepare(k)
            fn()
    cuda = device == "cuda"
    if cuda:
        import torch

        torch.cuda.synchronize()
        flush = None if host_time else _L2Flush(device)
    ms: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    order = random.Random(seed)
    start = time.perf_counter()
    turn = 0
    max_turns = max(turns, max_turns or turns)
    while turn < turns or (turn < max_turns and time.perf_counter() - start < min_s * len(fns)):
        order.shuffle(keys)
        if cuda:
            events = []
            for k in keys:
                prepare(k)  # queued before `begin`: not in the call's time
                if host_time:
                    torch.cuda.synchronize()  # the GPU idles before the call: host time counts
                else:
                    flush()  # queued: the call's launch hides behind the flush
                begin = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                begin.record()
                fns[k]()
                end.record()
                events.append((k, begin, end))
            torch.cuda.synchronize()
            for k, begin, end in events:
                ms[k].append(begin.elapsed_time(end))
        else:
            for k in keys:
                prepare(k)
                t0 = time.perf_counter()
                fns[k]()
                ms[k].append((time.perf_counter() - t0) * 1e3)
        turn += 1
    return Times(ms)
