"""benchmarks/bench.py: the plan, the timer's bookkeeping, the report, the time budget, and a
dry run of the CUDA suite's correctness rows on CPU (Triton interpreter). No timing here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench
from benchmarks._report import Report
from benchmarks._timer import Ratio, Times, measure, median_ci

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_plan_imports_every_suite_and_orders_its_rows(device):
    rows = bench.plan("all", device)
    assert {r.suite for r in rows} == set(bench.SUITES)
    assert [r.order for r in rows] == sorted(r.order for r in rows)
    names = " | ".join(r.name for r in rows)
    if device == "cuda":  # correctness first, then the network targets
        assert rows[0].name == "kernel correctness against float64"
        assert "BAM-ResNet-50 vs ResNet-50, eager" in names
        assert "BAM-ResNet-50 vs ResNet-50, compiled" in names
    else:
        assert "bam_small_cnn vs small_cnn" in names and "bam_resnet18 vs resnet18" in names


def test_plan_only_keeps_the_named_rows():
    rows = bench.plan("network", "cpu", only=["small_cnn"])
    assert [r.name for r in rows] == ["bam_small_cnn vs small_cnn, CPU"]


def test_measure_interleaves_the_functions_and_varies_their_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    t = measure(fns, 12, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    turns = [tuple(calls[3 + 3 * i : 6 + 3 * i]) for i in range(12)]
    assert all(sorted(turn) == ["a", "b", "c"] for turn in turns)
    assert len(set(turns)) > 1  # not always the same order
    assert all(len(v) == 12 for v in t.ms.values())


def test_median_interval_and_verdicts():
    assert median_ci([1.0] * 5)[1] == float("-inf")  # too few values for a 95% interval
    med, lo, hi = median_ci([float(i) for i in range(1, 21)])
    assert lo < med < hi and med == 10.5
    assert Ratio(1.0, 0.98, 1.02).verdict(1.05) is True
    assert Ratio(1.1, 1.06, 1.2).verdict(1.05) is False
    assert Ratio(1.05, 1.0, 1.1).verdict(1.05) is None
    assert Ratio(2.5, 2.2, 2.9).verdict(2.0, at_most=False) is True
    t = Times({"a": [2.0, 4.0, 6.0], "b": [1.0, 2.0, 2.0]})
    assert t.ratio("a", "b").value == 2.0  # per-turn ratios 2, 2, 3
    assert t.per_turn_best("a", "b") == [1.0, 2.0, 2.0]


def test_report_records_the_machine_and_a_dry_run_claims_nothing(tmp_path):
    report = Report("t", device="cpu", dry=True)
    report.machine_facts(threads=2)
    report.verdict("x / y", "1.0", "<= 1.05", True)
    out = tmp_path / "r.md"
    report.write(out)
    text = out.read_text()
    facts = ("- date: ", "- project commit: ", "- CPU: ", "- torch: ", "- triton: ", "- load")
    assert all(fact in text for fact in facts)
    assert "- x / y: 1.0 (target <= 1.05): unresolved" in text
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]  # no temporary file left


def test_a_row_that_does_not_fit_the_budget_is_cut_and_listed(tmp_path):
    out = tmp_path / "r.md"
    assert bench.main(["network", "--device", "cuda", "--plan"]) == 0
    assert bench.main(["network", "--device", "cpu", "--total-s", "0", "--out", str(out)]) == 0
    text = out.read_text()
    assert "rows cut by the time budget: bam_small_cnn vs small_cnn, CPU" in text
    assert "BAM-ResNet-50 vs ResNet-50, channels_last, CPU" in text
    assert "rows run (seconds): none" in text


def test_without_cuda_the_cuda_suite_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.main(["all", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_dry_run_of_the_cuda_correctness_rows_on_cpu(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "RESULTS_GPU.md"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    env.pop("TRITON_INTERPRET", None)  # bench.py chooses the interpreter itself
    rows = ["--only", "correctness", "--only", "gradients"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "all", "--device", "cuda"]
    cmd += ["--dry-run", *rows, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "GPU: none: a dry run on CPU" in text and "- triton: " in text
    kernels = "correctness of every kernel against float64: 24 of 24 pass (target all pass): met"
    assert kernels in text
    assert "CUDA block grads against float64" in text and ": met" in text


def test_dry_run_of_a_network_row_times_the_floor_beside_it_and_claims_nothing(tmp_path):
    out = tmp_path / "r.md"
    argv = ["network", "--device", "cpu", "--dry-run", "--only", "small_cnn", "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    verdicts = [line for line in text.splitlines() if "bam_small_cnn / small_cnn" in line]
    assert len(verdicts) == 2 and all(line.endswith(": unresolved") for line in verdicts)
    assert all("its floor" in line for line in verdicts)
    assert "| train step | floor |" in text and "| inference | null |" in text
