"""Checkpoints are written whole or not at all, beside their final name, with the usual mode."""

import errno
import os
import shutil
import tempfile

import pytest
import torch

from torch_bam.train.checkpoints import AtomicCheckpointIO


class _Killed(BaseException):
    """The process dies here (a kill, not an exception anything should catch)."""


@pytest.fixture
def tmpdir_elsewhere(tmp_path, monkeypatch):
    """``$TMPDIR`` on another filesystem than ``tmp_path``, as on many clusters.

    /dev/shm where it is another filesystem; otherwise a rename out of the temporary directory
    fails with EXDEV, as it would across filesystems.
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        other = tempfile.mkdtemp(dir=shm)
    else:
        other = str(tmp_path / "other-fs")
        os.mkdir(other)
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            if os.path.dirname(os.path.abspath(src)) == other:
                raise OSError(errno.EXDEV, "Invalid cross-device link (simulated)")
            return real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setenv("TMPDIR", other)
    monkeypatch.setattr(tempfile, "tempdir", other)
    yield other
    shutil.rmtree(other, ignore_errors=True)


def test_kill_during_save_with_tmpdir_elsewhere_keeps_last_checkpoint(
    tmp_path, tmpdir_elsewhere, monkeypatch
):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.zeros(1000)}, path)
    before = path.read_bytes()

    def copy_half_then_die(src, dst, *args, **kwargs):  # a kill during a cross-filesystem copy
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read()[:100])
        raise _Killed

    monkeypatch.setattr(shutil, "copyfile", copy_half_then_die)
    io.save_checkpoint({"w": torch.ones(1000)}, path)  # never copies: a rename in one directory
    monkeypatch.undo()
    assert path.read_bytes() != before
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert os.listdir(tmpdir_elsewhere) == []  # nothing of the checkpoint's size leaked there


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.zeros(1000)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def write_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        io.save_checkpoint({"w": torch.ones(1000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(1000))


def test_checkpoint_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644
