"""What one benchmark run does: its rows, in order, and the context each row runs in."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks._report import Report
from benchmarks._timer import Ratio, Times, measure


@dataclass
class Ctx:
    """What a row needs: the report, where it runs, and how long it may take.

    ``device`` is the suite's device ("cpu" or "cuda"); ``tensor_device`` is where tensors go:
    "cuda", or "cpu" in a dry run of the CUDA suite (the CUDA path under the Triton
    interpreter). A dry run uses tiny shapes and one or two turns: it checks that every row
    runs, and its verdicts read "unresolved"."""

    report: Report
    device: str
    dry: bool
    deadline: float = float("inf")  # time.monotonic()
    turns_scale: float = 1.0

    @property
    def tensor_device(self) -> str:
        import torch

        return "cuda" if self.device == "cuda" and torch.cuda.is_available() else "cpu"

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def turns(self, n: int) -> int:
        """``n`` turns (scaled by --quick), 2 in a dry run; at least 8 otherwise, the fewest
        that give a 95% interval for a median."""
        return 2 if self.dry else max(8, round(n * self.turns_scale))

    def measure(self, fns: dict, turns: int, **kw) -> Times:
        kw.setdefault("device", self.tensor_device)
        if self.dry:
            kw.update(warmup=1, min_s=0.0, max_turns=None)
        return measure(fns, self.turns(turns), **kw)

    def ratio_verdict(self, target: str, r: Ratio, goal: float, at_most: bool = True):
        sign = "<=" if at_most else ">="
        return self.report.verdict(target, str(r), f"{sign} {goal}", r.verdict(goal, at_most))

    def free(self) -> None:
        import torch

        gc.collect()
        if self.tensor_device == "cuda":
            torch.cuda.empty_cache()


@dataclass
class Row:
    suite: str  # "gate", "block" or "network"
    name: str
    run: Callable[[Ctx], None]
    est_s: float = 10.0  # seconds on the suite's device, for --total-s
    order: int = 50  # rows run by increasing order: the targets first
    targets: list[str] = field(default_factory=list)  # verdicts this row gives, for cut rows
