"""``torch-bam compare --devices 2 --strategy ddp`` on two CPU processes (gloo): the scale-up
recipe's multi-GPU path. Lightning starts the second process by running the command again; it
must train with the first, leave the run directory to it, and write nothing itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--variants", "none,bam", "--seeds", "1", "--epochs", "1", "--train-size", "64"]
TINY += ["--val-size", "16", "--test-size", "32", "--canvas", "24", "--batch-size", "16"]
TINY += ["--cost-turns", "2", "--no-progress"]


def test_compare_on_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch_bam.cli", "compare", *TINY, "--out", "runs/ddp"]
    cmd += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "runs" / "ddp"
    report = json.loads((out / "report.json").read_text())
    assert str(report["config"]["devices"]) == "2" and report["config"]["strategy"] == "ddp"
    assert list(report["variants"]) == ["none", "bam"]
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"].values()) + [
        "report.json",
        "report.md",
    ]
