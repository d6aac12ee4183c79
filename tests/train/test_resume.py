"""``--resume`` picks the newest intact checkpoint and says so when it skips a broken one."""

import os
import warnings

import pytest
import torch

from torch_bam.errors import UsageError
from torch_bam.train.checkpoints import resume_checkpoint


def _ckpt(path, step, age):
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(256)}}, path)
    t = 1_700_000_000 - age
    os.utime(path, (t, t))
    return path


def _truncate(path):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    os.utime(path, (1_700_000_000, 1_700_000_000))


def test_truncated_last_falls_back_to_newest_intact_checkpoint(tmp_path):
    _ckpt(tmp_path / "epoch=0-step=6.ckpt", 6, age=30)
    newest_intact = _ckpt(tmp_path / "epoch=1-step=12.ckpt", 12, age=20)
    _truncate(_ckpt(tmp_path / "last.ckpt", 14, age=0))
    with pytest.warns(UserWarning, match=r"last\.ckpt .*truncated or corrupt"):
        assert resume_checkpoint(tmp_path) == str(newest_intact)


def test_intact_last_is_taken(tmp_path):
    _ckpt(tmp_path / "epoch=0-step=6.ckpt", 6, age=30)
    last = _ckpt(tmp_path / "last.ckpt", 8, age=0)
    assert resume_checkpoint(tmp_path) == str(last)


def test_no_intact_checkpoint_is_a_usage_error(tmp_path):
    _truncate(_ckpt(tmp_path / "last.ckpt", 14, age=0))
    (tmp_path / "epoch=0-step=6.ckpt").write_bytes(b"")
    with pytest.raises(UsageError, match="no intact checkpoint") as e:
        resume_checkpoint(tmp_path)
    assert "last.ckpt" in str(e.value) and "without --resume" in str(e.value)


def test_nothing_to_resume_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nothing to resume"):
        resume_checkpoint(tmp_path / "checkpoints")


def test_resume_picks_the_most_trained_checkpoint_not_the_newest_file(tmp_path):
    # A run directory copied without timestamps: file times say nothing about progress.
    last = _ckpt(tmp_path / "last.ckpt", 12, age=30)
    _ckpt(tmp_path / "epoch=0-step=3.ckpt", 3, age=0)
    _ckpt(tmp_path / "epoch=1-step=12.ckpt", 12, age=10)  # as far as last.ckpt: last wins ties
    assert resume_checkpoint(tmp_path) == str(last)


def _run(tmp_path, *args):
    from torch_bam.cli import main

    from .test_cli_fit import TINY

    return main(["fit", *TINY, *args])


def _step(path):
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_sigterm_before_the_first_epoch_end_then_resume_leaves_one_current_last(tmp_path):
    import yaml

    run = tmp_path / "run"
    kill = tmp_path / "kill.yaml"
    sigterm = {"class_path": "tests.train._callbacks.SigtermAt", "init_args": {"step": 3}}
    kill.write_text(yaml.safe_dump({"trainer": {"callbacks": [sigterm]}}))
    assert _run(tmp_path, f"--run_dir={run}", "--trainer.max_steps=10", f"--config={kill}") == 143
    assert _step(run / "checkpoints" / "last.ckpt") == 3
    assert _run(tmp_path, f"--run_dir={run}", "--trainer.max_steps=10", "--resume") == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last-v1.ckpt" not in names, names
    assert _step(run / "checkpoints" / "last.ckpt") == 10


def test_resume_of_a_run_directory_copied_without_timestamps(tmp_path):
    import csv
    import shutil

    first = tmp_path / "first"
    keep = "--keep_last=2"
    assert _run(tmp_path, f"--run_dir={first}", "--trainer.max_epochs=2", keep) == 0  # 6 a time
    run = tmp_path / "copy"
    shutil.copytree(first, run, copy_function=shutil.copyfile)  # cp -r: no times kept
    ckpts = run / "checkpoints"
    for age, name in enumerate(["epoch=0-step=6.ckpt", "epoch=1-step=12.ckpt", "last.ckpt"]):
        t = 1_700_000_000 - 100 * age  # last.ckpt the oldest file, step 6 the newest
        os.utime(ckpts / name, (t, t))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _run(tmp_path, f"--run_dir={run}", "--trainer.max_epochs=3", "--resume", keep) == 0
    assert _step(ckpts / "last.ckpt") == 18
    # The checkpoints there are the run's own: no "directory exists and is not empty".
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "not empty" in m], messages
    # The moved directory's files are still the run's own: the oldest is pruned (keep 2).
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["epoch=1-step=12.ckpt", "epoch=2-step=18.ckpt", "last.ckpt"], names
    with open(run / "logs" / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert sorted(set(steps)) == list(range(18)), steps  # every step once, none repeated
    assert len(steps) == len(set(steps))
