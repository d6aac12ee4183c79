"""Real DDP on CPU: two processes with gloo end with identical weights, and resume exactly."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from .test_cli_fit import TINY

ROOT = Path(__file__).resolve().parents[2]


def _cb(name, **init_args):
    return {"class_path": f"tests.train._callbacks.{name}", "init_args": init_args}


def _fit_ddp(tmp_path, run, callbacks, *args, data=()):
    """``torch-bam fit`` on 2 CPU processes (gloo); returns the finished process."""
    cfg = tmp_path / f"{run.name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    cmd = [
        sys.executable,
        "-m",
        "torch_bam.cli",
        "fit",
        *data,  # a data class first: the data options in TINY are then its own
        *TINY,
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        f"--run_dir={run}",
        f"--config={cfg}",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    out = _fit_ddp(
        tmp_path,
        tmp_path / "run",
        [_cb("SaveRankWeights", dirpath=str(tmp_path))],
        "--trainer.max_epochs=1",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    start = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert start["global_step"] == 96 // 16 // 2  # each rank saw half the data per step count
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


def test_ddp_stopped_mid_epoch_then_resumed_matches_uninterrupted_run(tmp_path):
    # 128 samples, 2 ranks of 4 batches of 16 per epoch: 8 steps; stop after step 6 (epoch 1).
    # Random augmentation in the data and noise in each step, each rank its own stream (PartRankRNG
    # makes the ranks' generators differ): all must draw as in the uninterrupted run.
    common = ["--data.num_train=128", "--trainer.max_epochs=2"]
    data = ["--data=tests.train._data.AugmentedDigits"]
    noise = [_cb("PartRankRNG"), _cb("NoisyBatch")]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    (straight / "w").mkdir(parents=True)
    (cut / "w").mkdir(parents=True)

    save = _cb("SaveRankWeights", dirpath=str(straight / "w"))
    out = _fit_ddp(tmp_path, straight, [save, *noise], *common, data=data)
    assert out.returncode == 0, out.stderr[-3000:]

    stop = [*noise, _cb("SigtermAt", step=6)]
    out = _fit_ddp(tmp_path, cut, stop, *common, data=data)
    # SIGTERM on every rank, as SLURM sends it: 143, or killed by Lightning's process observer
    # once the other rank has exited 143.
    assert out.returncode != 0, out.stderr[-3000:]
    ckpt_path = cut / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)  # still only tensors and plain values
    assert ckpt["global_step"] == 6
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 2, "seed": 0}
    ]
    (rng,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("RNGState")]
    assert len(rng["ranks"]) == 2
    assert not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"])

    save = [_cb("SaveRankWeights", dirpath=str(cut / "w")), _cb("SaveRankRNG", dirpath=str(cut))]
    out = _fit_ddp(tmp_path, cut, [*save, *noise], *common, "--resume", data=data)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "not skipped" not in out.stderr
    assert torch.load(ckpt_path, weights_only=True)["global_step"] == 8
    for r in (0, 1):
        # Each rank restored its own generators, not rank 0's.
        assert torch.equal(
            torch.load(cut / f"rng_rank{r}.pt", weights_only=True), rng["ranks"][r]["torch"]
        )
        a = torch.load(straight / "w" / f"rank{r}.pt", weights_only=True)
        b = torch.load(cut / "w" / f"rank{r}.pt", weights_only=True)
        assert a.keys() == b.keys()
        # Bit-equal: same batches in the same order, same CPU kernels, same 2-way gloo sums.
        for k in a:
            assert torch.equal(a[k], b[k]), (r, k)
