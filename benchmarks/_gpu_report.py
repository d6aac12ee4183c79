"""The report that ``benchmarks/gpu.py`` (kernels) and ``benchmarks/gpu_block.py`` (block and
network) fill in one run: facts about the machine, tables, and one verdict per target.

    report = Report("GPU results")
    report.fact("card", "NVIDIA H100 80GB HBM3")
    report.table("Gate forward, ms", ["shape", "copy", "ours"], rows)
    report.verdict("gate forward / copy bandwidth, worst shape", 0.83, ">= 0.8", 0.83 >= 0.8)
    report.write("benchmarks/RESULTS_GPU.md")

A verdict with ``met=None`` reads "unresolved" (e.g. a step that failed or was skipped).
``device``, ``smoke`` and ``deadline`` tell a contributor (``gpu_block.run(report)``) where to
run, whether this is the CPU dry run (tiny shapes, ``TRITON_INTERPRET=1``), and when to stop
timing (``time_left()`` seconds, so that the whole run stays within its budget).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field


@dataclass
class Verdict:
    target: str  # what is measured, e.g. "gate forward / copy, worst shape"
    value: str  # the measured value, formatted
    goal: str  # the target, e.g. ">= 0.8"
    met: bool | None

    def line(self) -> str:
        word = {True: "met", False: "NOT met", None: "unresolved"}[self.met]
        return f"{self.target}: {self.value} (target {self.goal}): {word}"


@dataclass
class Report:
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    device: str = "cuda"
    smoke: bool = False
    deadline: float | None = None  # time.monotonic() value

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def fact(self, name: str, value: object) -> None:
        self.facts.append((name, str(value)))

    def text(self, title: str, lines: list[str]) -> None:
        """A free-form section (paragraphs or a list)."""
        self.sections.append((title, list(lines)))

    def table(self, title: str, columns: list[str], rows: list[list[object]]) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.sections.append((title, lines))

    def verdict(self, target: str, value: object, goal: str, met: bool | None) -> Verdict:
        v = Verdict(target, _cell(value), goal, met)
        self.verdicts.append(v)
        print("VERDICT " + v.line(), flush=True)
        return v

    @property
    def all_met(self) -> bool:
        return all(v.met for v in self.verdicts)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [f"- {name}: {value}" for name, value in self.facts]
        for title, lines in self.sections:
            out += ["", f"## {title}", "", *lines]
        out += ["", "## Verdicts", ""]
        out += [f"- {v.line()}" for v in self.verdicts] or ["- (none)"]
        return "\n".join(out) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        from torch_bam._io import atomic_write_text

        atomic_write_text(path, self.markdown())


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)
