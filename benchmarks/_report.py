"""The one report writer of the benchmarks: the machine, tables and one verdict per target.

    report = Report("CPU results", device="cpu")
    report.machine_facts()                       # CPU / GPU, cores, versions, commit, date, load
    report.table("Gate alone, ms", ["variant", "ms"], rows)
    report.verdict("block fwd+bwd, seed / ours, C=256", ratio, ">= 2.0", ratio.verdict(2.0, False))
    report.write("benchmarks/RESULTS.md")

A verdict with ``met=None`` reads "unresolved" (the interval contains the target, a row was cut
by the time budget, or this is a dry run, whose times mean nothing).
"""

# Tables and messages are long lines:
# ruff: noqa: E501

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Verdict:
    target: str  # what is measured
    value: str  # the measured value, formatted
    goal: str  # e.g. "<= 1.05"
    met: bool | None

    def line(self) -> str:
        word = {True: "met", False: "NOT met", None: "unresolved"}[self.met]
        return f"{self.target}: {self.value} (target {self.goal}): {word}"


@dataclass
class Report:
    title: str
    device: str = "cpu"
    dry: bool = False
    facts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def fact(self, name: str, value: object) -> None:
        self.facts.append((name, str(value)))

    def note(self, text: str) -> None:
        """A paragraph printed above the verdicts (e.g. that the machine was loaded)."""
        self.notes.append(text)

    def text(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, list(lines)))

    def table(self, title: str, columns: list[str], rows: list[list[object]], after=()) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.sections.append((title, lines + ([""] + list(after) if after else [])))
        print(f"\n## {title}\n" + "\n".join(lines), flush=True)

    def verdict(self, target: str, value: object, goal: str, met: bool | None) -> Verdict:
        v = Verdict(target, cell(value), goal, None if self.dry else met)
        self.verdicts.append(v)
        print("VERDICT " + v.line(), flush=True)
        return v

    def machine_facts(self, threads: int | None = None) -> None:
        import torch

        self.fact("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
        self.fact("project commit", commit())
        cores = f"{os.cpu_count()} logical CPUs"
        if threads is not None:
            cores += f", torch.set_num_threads({threads})"
        self.fact("CPU", f"{cpu_model()}, {cores}")
        if self.device == "cuda" and torch.cuda.is_available():
            prop = torch.cuda.get_device_properties(0)
            self.fact(
                "GPU", f"{prop.name}, {prop.multi_processor_count} SMs, "
                f"{prop.total_memory / 2**30:.0f} GiB; driver {_driver()}; CUDA {torch.version.cuda}"
            )  # fmt: skip
        elif self.device == "cuda":
            self.fact("GPU", "none: a dry run on CPU, the CUDA path under TRITON_INTERPRET=1")
        self.fact("torch", torch.__version__)
        self.fact("triton", _triton_version())
        self.fact("python", platform.python_version())
        self.fact("load average (1, 5, 15 min) at the start", loadavg())

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        out += [f"- {name}: {value}" for name, value in self.facts]
        out += ["", "## Verdicts", ""]
        out += [f"{n}\n" for n in self.notes]
        out += [f"- {v.line()}" for v in self.verdicts] or ["- (none)"]
        for title, lines in self.sections:
            out += ["", f"## {title}", "", *lines]
        return "\n".join(out) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write the report whole or not at all (a temporary file renamed over ``path``)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.markdown())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=HERE,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=10, cwd=HERE,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" (with uncommitted changes)" if dirty else "")


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__
