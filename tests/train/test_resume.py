"""``--resume`` picks the newest intact checkpoint and says so when it skips a broken one."""

import os

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
