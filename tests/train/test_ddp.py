"""Real DDP on CPU: two processes with gloo end with identical weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from .test_cli_fit import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cb = {
        "class_path": "tests.train._callbacks.SaveRankWeights",
        "init_args": {"dirpath": str(tmp_path)},
    }
    cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": [cb]}}))
    cmd = [
        sys.executable,
        "-m",
        "torch_bam.cli",
        "fit",
        *TINY,
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.max_epochs=1",
        f"--run_dir={tmp_path / 'run'}",
        f"--config={cfg}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt")
    w1 = torch.load(tmp_path / "rank1.pt")
    start = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert start["global_step"] == 96 // 16 // 2  # each rank saw half the data per step count
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
