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


def test_measure_runs_before_each_call_untimed():
    # An in-place call (BAM(inplace=True)) overwrites its input: `before` restores it before
    # every call, warm-up included, outside the timed region.
    import torch

    x0 = torch.ones(4)
    x = x0.clone()
    seen = []

    def inplace():
        seen.append(x.clone())
        x.mul_(2)

    t = measure({"inplace": inplace}, 5, warmup=2, before={"inplace": lambda: x.copy_(x0)})
    assert len(seen) == 7 and all(torch.equal(v, x0) for v in seen)
    assert len(t.ms["inplace"]) == 5


def test_the_cpu_block_rows_time_every_call_on_the_same_input(monkeypatch):
    # The in-place row used to run on its own output, turn after turn: its input grew by up to
    # 2x per call (to 1e31 and inf in a full run) and its time with it. Each timed function
    # here, called twice (with its `before`), must give the same output.
    import torch

    from benchmarks import _plan, block

    checked = []

    def fake_measure(fns, turns, before=None, **kw):
        before = before or {}
        for k, fn in fns.items():
            if "compile" in k:
                continue  # torch.compile of the seed: slow here, and not in place
            outs = []
            for _ in range(2):
                before.get(k, lambda: None)()
                out = fn()
                outs.append(out.clone() if isinstance(out, torch.Tensor) else out)
            if isinstance(outs[0], torch.Tensor):
                torch.testing.assert_close(outs[1], outs[0], msg=k)
                checked.append(k)
        return Times({k: [1.0, 1.0] for k in fns})

    monkeypatch.setattr(_plan, "measure", fake_measure)
    report = Report("t", device="cpu", dry=True)
    ctx = _plan.Ctx(report=report, device="cpu", dry=True)
    block.cpu_block(block.DRY_CPU_SHAPES[0])(ctx)
    assert "ours fused+inplace NCHW" in checked and "ours fused+inplace CL" in checked


def test_every_in_place_row_of_the_cpu_suites_restores_its_input(monkeypatch):
    from benchmarks import _plan, block, gate

    rows = {}

    def fake_measure(fns, turns, before=None, **kw):
        for k in fns:
            if "in place" in k or "inplace" in k:
                rows[k] = k in (before or {})
        return Times({k: [1.0, 1.0] for k in fns})

    monkeypatch.setattr(_plan, "measure", fake_measure)
    monkeypatch.setattr("torch.compile", lambda fn, **kw: fn)  # not called by the fake timer
    ctx = _plan.Ctx(report=Report("t", device="cpu", dry=True), device="cpu", dry=True)
    gate.cpu_gate(ctx)
    block.cpu_block(block.DRY_CPU_SHAPES[0])(ctx)
    assert len(rows) >= 3 and all(rows.values()), rows


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
