"""torch_bam._io: files written whole or not at all; one run per directory."""

import os
import subprocess
import sys

import pytest
import torch

from torch_bam._io import RunDirLock, atomic_write, atomic_write_text, remove_stale_temporaries
from torch_bam.errors import UsageError


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "report.md"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["report.md"]  # no temporary file left beside it


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    atomic_write(path, lambda f: torch.save({"w": torch.ones(3)}, f))

    def fail(f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.pt"]


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "a.txt").st_mode & 0o777) == 0o644  # not mkstemp's 0600


def test_atomic_write_creates_the_directory(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"


def test_remove_stale_temporaries_only_removes_ours(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    (tmp_path / ".torch-bam-tmp-abc.tmp").write_text("leaked by a crash")
    removed = remove_stale_temporaries(tmp_path)
    assert [os.path.basename(p) for p in removed] == [".torch-bam-tmp-abc.tmp"]
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_run_dir_lock_refuses_a_second_holder(tmp_path):
    with RunDirLock(tmp_path, what="demo"):
        with pytest.raises(UsageError, match="in use by another demo"):
            RunDirLock(tmp_path, what="demo").acquire()
    RunDirLock(tmp_path).acquire().release()  # free again once released


def test_run_dir_lock_refuses_another_process(tmp_path):
    code = (
        "import sys, time; from torch_bam._io import RunDirLock; "
        f"RunDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="in use"):
            RunDirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    RunDirLock(tmp_path).acquire().release()  # a killed holder leaves no stale lock


def test_check_output_dir(tmp_path):
    from torch_bam._io import check_output_dir

    assert check_output_dir(tmp_path) == []  # exists: nothing to create
    new = tmp_path / "a" / "b"
    assert check_output_dir(new) == [str(new), str(tmp_path / "a")]  # deepest first
    assert not (tmp_path / "a").exists()  # checking creates nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="--out .* is a file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(UsageError, match="--dir .*f is a file, not a directory"):
        check_output_dir(tmp_path / "f" / "sub", flag="--dir")


def test_undo_on_failure_removes_only_what_the_block_made(tmp_path):
    import pytest

    from torch_bam._io import RunDirLock, atomic_write_text, undo_on_failure

    (tmp_path / "old.txt").write_text("the user's")
    atomic_write_text(tmp_path / "replaced.txt", "before")
    with pytest.raises(KeyboardInterrupt), undo_on_failure():
        with RunDirLock(tmp_path / "run"):
            atomic_write_text(tmp_path / "run" / "sub" / "a.txt", "new")
            atomic_write_text(tmp_path / "replaced.txt", "after")  # replaced, not created
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt", "replaced.txt"]
    with undo_on_failure():  # a block that succeeds keeps everything
        atomic_write_text(tmp_path / "kept.txt", "x")
    assert (tmp_path / "kept.txt").read_text() == "x"


def test_run_dir_lock_leaves_no_lock_file(tmp_path):
    with RunDirLock(tmp_path):
        assert os.listdir(tmp_path) == [".lock"]
    assert os.listdir(tmp_path) == []  # a finished run leaves no .lock behind


def test_run_dir_lock_taken_on_a_removed_file_is_taken_again(tmp_path, monkeypatch):
    # B opens the lock file, then A releases (and removes it) before B locks: B holds a file
    # that is no longer the directory's lock and must take the new one, or a third run could
    # hold the directory beside it.
    import fcntl

    a = RunDirLock(tmp_path).acquire()
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        if op & fcntl.LOCK_EX and not calls:
            a.release()
        calls.append(op)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    b = RunDirLock(tmp_path).acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert len([op for op in calls if op & fcntl.LOCK_EX]) == 2  # locked, saw it stale, again
    with pytest.raises(UsageError, match="in use"):
        RunDirLock(tmp_path).acquire()  # B holds the file now at the path
    b.release()
    assert os.listdir(tmp_path) == []
