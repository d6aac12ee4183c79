"""torch-bam's benchmarks: one entry point, one timer, one report.

    PYTHONPATH=src python benchmarks/bench.py all --device cpu      # writes benchmarks/RESULTS.md
    PYTHONPATH=src python benchmarks/bench.py all --device cuda --out /tmp/suite.md  # more rows
    PYTHONPATH=src python benchmarks/bench.py network --device cpu --out /tmp/r.md
    PYTHONPATH=src python benchmarks/bench.py all --device cuda --plan      # list the rows, run nothing
    PYTHONPATH=src python benchmarks/bench.py all --device cuda --dry-run --out /tmp/r.md

Suites: ``gate`` (the gate alone; on CUDA also every kernel against float64), ``block`` (one BAM
block against the seed's), ``network`` (whole networks against the same network without BAM,
beside BAM's floor). Every row times the measured thing and its references in the same turns
(``benchmarks/_timer.py``) and writes its table and verdicts into one report
(``benchmarks/_report.py``), headed by the machine, the versions, the commit, the date and the
load average.

Rows run targets first. ``--total-s`` is a time budget: a row whose estimate no longer fits is
cut, and the report lists it (its verdicts read "unresolved"); on CUDA the default (510 s) keeps
the whole call within about 9 minutes on an H100/H200. ``--dry-run`` runs every row at tiny
shapes with two turns to check that it runs (on a machine without CUDA, the CUDA suite runs on
CPU through the Triton interpreter); its times mean nothing and its timing verdicts read
"unresolved". Exits 2 when the device is missing, 1 when a correctness check failed.
"""

# Tables and messages are long lines:
# ruff: noqa: E501

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT / "src"), str(ROOT)):  # torch_bam, and benchmarks/tests as packages
    if p not in sys.path:
        sys.path.insert(0, p)

SUITES = ("gate", "block", "network")
DEFAULT_TOTAL_S = {"cpu": None, "cuda": 510.0}
NOISY = (
    "**The load average was above the {cores} cores used during this run (other jobs): "
    "single timings vary between turns. Ratios taken within a turn are still informative, "
    "but read a verdict as settled only when its interval is well clear of the target; rerun "
    "on a quiet machine.**"
)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=[*SUITES, "all"], help="what to run")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--out", help="report path (default benchmarks/RESULTS.md on cpu; needed on cuda)"
    )
    p.add_argument(
        "--total-s", type=float, help="time budget in seconds (default: none on cpu, 510 on cuda)"
    )
    p.add_argument("--quick", action="store_true", help="half the turns (noisier)")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only rows whose name contains TEXT (repeatable)")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="list the rows in order and exit")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny shapes, two turns: check that every row runs"
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads on cpu (default 2)"
    )
    return p.parse_args(argv)


def plan(suite: str, device: str, dry: bool = False, only=()):
    """The rows of ``suite`` ("all" for every suite) on ``device``, in the order they run."""
    from benchmarks import block, gate, network

    modules = {"gate": gate, "block": block, "network": network}
    names = SUITES if suite == "all" else (suite,)
    rows = [r for n in names for r in modules[n].rows(device, dry)]
    if only:
        rows = [r for r in rows if any(o in r.name for o in only)]
    return sorted(rows, key=lambda r: r.order)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.device == "cuda" and args.dry_run and "triton" not in sys.modules:
        # Without a GPU the dry run runs the CUDA path on CPU under the Triton interpreter,
        # which must be chosen before triton is imported.
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if (
        args.device == "cuda"
        and not args.plan
        and not args.dry_run
        and not torch.cuda.is_available()
    ):
        print(
            "bench.py: no CUDA device here (torch.cuda.is_available() is False). Run it on a GPU "
            "machine, or check the CUDA suite here with --dry-run.",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda" and not args.plan:
        try:
            import triton  # noqa: F401
        except ImportError:
            print(
                "bench.py: the CUDA suite needs triton; install it (pip install triton).",
                file=sys.stderr,
            )
            return 2
        from torch_bam.cuda import kernels

        if not torch.cuda.is_available() and not kernels.INTERPRETED:
            print(
                "bench.py: --dry-run of the CUDA suite without a GPU needs the Triton interpreter, "
                "but triton was imported without it: set TRITON_INTERPRET=1 before starting.",
                file=sys.stderr,
            )
            return 2
    if args.device == "cuda" and not args.plan and not args.out:
        print(
            "bench.py: give the CUDA suite an --out path. benchmarks/RESULTS_GPU.md is written by "
            "benchmarks/gpu.py, the one command to run on a GPU machine.",
            file=sys.stderr,
        )
        return 2
    rows = plan(args.suite, args.device, args.dry_run, args.only)
    if args.plan:
        for r in rows:
            print(f"{r.order:3d}  {r.suite:8s} {r.name}  (~{r.est_s:.0f} s)")
        return 0

    from benchmarks._plan import Ctx
    from benchmarks._report import Report, loadavg

    start = time.monotonic()
    total = args.total_s
    if total is None and not args.dry_run:  # a dry run's times are not the device's
        total = DEFAULT_TOTAL_S[args.device]
    out = (
        Path(args.out)
        if args.out
        else HERE / "RESULTS.md"
    )
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    title = {"cpu": "Benchmark results on CPU", "cuda": "Benchmark results on a GPU"}[args.device]
    report = Report(title + (" (dry run: times mean nothing)" if args.dry_run else ""),
                    device=args.device, dry=args.dry_run)  # fmt: skip
    cmd = "PYTHONPATH=src python benchmarks/bench.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    report.fact("written by", f"`{cmd}` (do not edit by hand; rerun it)")
    report.machine_facts(threads=args.threads if args.device == "cpu" else None)
    load0 = os.getloadavg()[0]
    ctx = Ctx(report, args.device, args.dry_run, turns_scale=0.5 if args.quick else 1.0,
              deadline=start + total if total is not None else float("inf"))  # fmt: skip
    ran, cut, failed = [], [], []
    cores = args.threads if args.device == "cpu" else os.cpu_count()

    def write(pending) -> None:
        """The report as it stands: written after every row, so that a run stopped early
        (killed, out of time) leaves a whole report of the rows it finished."""
        final = copy.deepcopy(report)
        final.fact("load average (1, 5, 15 min) at the end", loadavg())
        final.fact("wall time of this run", f"{time.monotonic() - start:.0f} s")
        final.fact("rows run (seconds)", ", ".join(f"{r.name} ({s:.0f})" for r, s in ran) or "none")
        if cut:
            final.fact("rows cut by the time budget", ", ".join(r.name for r in cut))
        if pending:
            final.fact(
                "rows not run (the run stopped before them)", ", ".join(r.name for r in pending)
            )
        if args.device == "cpu" and max(load0, os.getloadavg()[0]) > cores + 0.5:
            final.note(NOISY.format(cores=cores))
        if args.dry_run:
            final.note(
                "**A dry run: tiny shapes and two turns, to check that every row runs. Its times mean nothing.**"
            )
        final.write(out)

    for i, row in enumerate(rows):
        if ctx.time_left() < row.est_s:
            cut.append(row)
            for t in row.targets:
                report.verdict(t, "cut by the time budget", "(see the row)", None)
            continue
        print(f"\n=== {row.suite}: {row.name} (at {time.monotonic() - start:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            row.run(ctx)
        except Exception as exc:  # report what ran; one crash must not lose the other rows
            import traceback

            traceback.print_exc()
            failed.append(row)
            report.verdict(
                f"row '{row.name}'", f"crashed: {type(exc).__name__}: {exc}"[:300], "runs", False
            ).met = False
        ran.append((row, time.monotonic() - t0))
        ctx.free()
        write(rows[i + 1 :])
    write([])
    print(f"\nwrote {out}")
    for v in report.verdicts:
        print(v.line())
    bad = failed or any(
        v.met is False and v.target.startswith(("correctness", "CUDA block grads"))
        for v in report.verdicts
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
