"""benchmarks/gpu.py: a smoke run end to end on CPU (the Triton path under the interpreter),
the rule that alone may change the verified table, and sections that keep running after one
fails. No timing here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu
from torch_bam.cuda import support

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_end_to_end_on_cpu_touches_neither_table_nor_results(tmp_path):
    pytest.importorskip("triton")
    results = ROOT / "benchmarks" / "RESULTS_GPU.md"
    before = (support.TABLE.read_bytes(), results.read_bytes() if results.exists() else None)
    out = tmp_path / "r.md"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    env.pop("TRITON_INTERPRET", None)  # gpu.py chooses the interpreter itself
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    for section in ("1. kernels (ok)", "2. CUDA graphs (ok)", "3. block (ok)", "4. network (ok)"):
        assert section in text
    checks = [line for line in text.splitlines() if line.startswith("- correctness: ")]
    assert len(checks) >= 5 and all(line.endswith(": met") for line in checks), checks
    timed = [line for line in text.splitlines() if "(target <=" in line]
    assert timed and all(line.endswith(": unresolved") for line in timed)  # claims no speed
    assert "- correct: yes" in text
    assert "- verified table: unchanged (a smoke run never changes the table)" in text
    assert "GPU: none" in text and "- triton: " in text and "- date: " in text
    after = (support.TABLE.read_bytes(), results.read_bytes() if results.exists() else None)
    assert after == before


def test_smoke_needs_an_out_path_and_a_real_run_needs_cuda(capsys):
    import torch

    assert gpu.main(["--smoke"]) == 2
    assert "--out" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu.main([]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_only_a_full_correct_and_faster_run_verifies():
    ok = {"kernels": True, "block": True}
    fast = {"block fwd+bwd": True, "network train step": True}
    assert gpu.should_verify(ok, fast, smoke=False, ran_all=True)[0]
    assert not gpu.should_verify(ok, fast, smoke=True, ran_all=True)[0]
    assert not gpu.should_verify(ok, fast, smoke=False, ran_all=False)[0]
    assert not gpu.should_verify({**ok, "streams": False}, fast, smoke=False, ran_all=True)[0]
    assert not gpu.should_verify({}, fast, smoke=False, ran_all=True)[0]
    for unresolved in (None, False):  # an interval over 1.0, or slower
        slow = {**fast, "block fwd": unresolved}
        assert not gpu.should_verify(ok, slow, smoke=False, ran_all=True)[0]
    assert not gpu.should_verify(ok, {}, smoke=False, ran_all=True)[0]


def test_add_to_table_adds_or_replaces_the_class_atomically(tmp_path):
    table = tmp_path / "verified.json"
    table.write_text(support.TABLE.read_text())
    entry = {"vendor": "nvidia", "capability": [9, 0], "gpu": "H100", "date": "2026-12-07"}
    gpu.add_to_table(table, entry)
    gpu.add_to_table(table, {**entry, "date": "2026-12-08"})
    gpu.add_to_table(table, {**entry, "capability": [8, 0], "gpu": "A100"})
    classes = json.loads(table.read_text())["classes"]
    got = [(c["gpu"], c["date"]) for c in classes]
    assert got == [("H100", "2026-12-08"), ("A100", "2026-12-07")]
    assert [p.name for p in tmp_path.iterdir()] == ["verified.json"]


def test_a_section_that_fails_is_recorded_and_the_next_ones_run(tmp_path):
    out = tmp_path / "r.md"
    run = gpu.Run(smoke=True, out=out)
    ran = []

    def broken(run):
        raise RuntimeError("kernel exploded")

    def fine(run):
        ran.append(out.read_text())  # the report was written after the broken section

    gpu.run_sections(run, [("1. broken", broken), ("2. fine", fine)])
    assert ran and "1. broken (failed: RuntimeError: kernel exploded)" in ran[0]
    assert run.checks == {"section 1. broken ran": False}
    assert "2. fine (ok)" in out.read_text()
