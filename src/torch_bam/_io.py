"""Files written whole or not at all, and run directories owned by one process at a time.

Every file torch-bam writes (reports, metrics, checkpoints, pictures) goes through
:func:`atomic_write`: the data goes to a uniquely named temporary file in the *target's own
directory* (so the final rename never crosses a filesystem), is flushed and fsynced, and is then
renamed over the final name. A reader sees the old file or the new one, never half of one, and
two writers never share a temporary name.

:class:`RunDirLock` makes a run own its output directory: a second run pointed at the same
directory is refused with a clear error instead of mixing its files with the first one's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from .errors import UsageError

__all__ = [
    "RunDirLock",
    "atomic_write",
    "atomic_write_text",
    "check_output_dir",
    "load_weights_only",
    "undo_on_failure",
]

_TMP_PREFIX = ".torch-bam-tmp-"
_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, quota exceeded

# The files and directories made inside each open `undo_on_failure` block, innermost last.
_made: list[list[str]] = []


def _note_made(path: str) -> None:
    for record in _made:
        record.append(path)


def _makedirs(directory: str) -> None:
    """``os.makedirs(directory, exist_ok=True)``, noting each directory it creates."""
    missing = []
    d = os.path.abspath(directory)
    while not os.path.isdir(d) and d != os.path.dirname(d):
        missing.append(d)
        d = os.path.dirname(d)
    os.makedirs(directory, exist_ok=True)
    for d in reversed(missing):
        _note_made(d)


@contextlib.contextmanager
def undo_on_failure() -> Iterator[None]:
    """If the block fails, remove the files :func:`atomic_write` created in it (not those it
    replaced) and the directories torch-bam made for them: a run stopped by a full disk, an
    error or Ctrl-C leaves none of its new files behind, not only no half of one."""
    record: list[str] = []
    _made.append(record)
    try:
        yield
    except BaseException:
        for path in reversed(record):  # files before the directories that hold them
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)  # only if empty: never another writer's files
                else:
                    os.unlink(path)
        raise
    finally:
        _made.remove(record)


@contextlib.contextmanager
def _temp_beside(path: str, binary: bool) -> Iterator[tuple[IO, str]]:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    _makedirs(directory)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=directory)
    try:
        # mkstemp makes 0600 files; give the final file the mode any other file gets (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: str) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    ``write`` may be ``lambda f: torch.save(obj, f)`` or ``lambda f: f.write(data)``. On any
    error (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    new = not os.path.lexists(path)
    try:
        with _temp_beside(path, binary) as (f, tmp):
            write(f)
    except OSError as e:
        if e.errno in _FULL and not e.filename:  # say which file the full disk stopped
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), path) from e
        raise
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if new:
        _note_made(os.path.abspath(path))
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete temporary files a crashed writer left in ``directory``; return their paths.

    Call it only while holding the directory (:class:`RunDirLock`): another live writer's
    temporary file would otherwise be removed under it.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(_TMP_PREFIX):
                p = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                    removed.append(p)
    return removed


class RunDirLock:
    """Hold ``<directory>/.lock`` (an advisory ``flock``) for the duration of a run.

    A second process (or a second ``RunDirLock`` in the same process) that asks for the same
    directory gets a :class:`UsageError` naming the directory and the fix. The lock dies with
    the process, so a killed run never leaves the directory locked. ``release`` removes the
    lock file (while still holding it), so a finished run leaves no ``.lock`` behind; a run
    that takes the lock checks that the file it locked is still the one at the path, so a file
    removed under it never lets two runs hold the directory.

    Example:
        >>> with RunDirLock("runs/demo"):
        ...     ...  # write the run's files
    """

    def __init__(self, directory: str | os.PathLike, what: str = "run") -> None:
        self.directory = os.fspath(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        import fcntl  # POSIX only; imported here so the module imports everywhere

        _makedirs(self.directory)
        path = self.path
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise UsageError(
                        f"{self.directory} is in use by another {self.what} (it holds "
                        f"{path}). Wait for it to finish, or choose another output directory."
                    ) from None
                raise
            if self._is_at_path(fd):
                break
            # The holder released (and removed) the file between our open and our lock: the
            # file we hold is no longer the directory's lock. Try again with the new one.
            os.close(fd)
        self._fd = fd
        return self

    @property
    def path(self) -> str:
        return os.path.join(self.directory, ".lock")

    def _is_at_path(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            # Remove the file while still holding it, and only if it is ours.
            if self._is_at_path(self._fd):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_output_dir(out: str | os.PathLike, flag: str = "--out") -> list[str]:
    """Refuse an output directory that cannot be used, before anything is written.

    ``out`` must be a writable directory, or a path where one can be created. Returns the
    directories that would have to be created, deepest first, so that a run that fails later
    can remove exactly those. Raises :class:`UsageError` naming ``flag``, the cause and the
    fix.
    """
    out = os.fspath(out)
    target = os.path.abspath(out)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise UsageError(f"{flag} {out} is a file, not a directory. Choose a directory.")
    to_create = []
    while not os.path.lexists(target):
        to_create.append(target)
        target = os.path.dirname(target)
    if not os.path.isdir(target):
        raise UsageError(
            f"{flag} {out} cannot be created: {target} is a file, not a directory. Choose "
            f"another {flag}."
        )
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(
            f"{flag} {out}: {target} is not writable. Choose a directory you can write to."
        )
    return to_create


def unsafe_global(error: BaseException) -> str | None:
    """The object a weights-only load refused (``io.open``), from torch's message."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    return found.group(1) if found else None


def load_weights_only(path: str | os.PathLike, fix: str, mmap: bool = False):
    """``torch.load(path, map_location="cpu", weights_only=True)``; every failure a one-line
    :class:`UsageError` naming ``path``, the cause and ``fix`` (what the user should pass).

    A file holding a pickled object (which a full load would run) is refused by name. ``mmap``
    reads only the record index up front, a cheap check that a file is whole.
    """
    import pickle

    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UsageError(f"no such checkpoint file: {path}. {fix}")
    if os.path.isdir(path):
        raise UsageError(f"checkpoint {path} is a directory. {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        unsafe = unsafe_global(e)
        if unsafe:
            raise UsageError(
                f"checkpoint {path} holds a pickled {unsafe}, not only tensors and plain "
                f"values; loading it could run code, so torch-bam, which loads checkpoints with "
                f"torch.load(weights_only=True), refuses it. If you trust the file, load it in "
                f"Python with weights_only=False and save only its tensors and plain values."
            ) from None
        raise _unreadable(path, e, fix) from None
    except OSError as e:
        raise UsageError(f"cannot read checkpoint {path} ({e.strerror or e}). {fix}") from None
    except Exception as e:  # torch's zip reader, EOF, a stray pickle opcode: a damaged file
        raise _unreadable(path, e, fix) from None


def _unreadable(path: str, error: BaseException, fix: str) -> UsageError:
    # torch's own messages run to paragraphs: keep the part that says what is wrong.
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    reason = detail.group(1) if detail else str(error).split("\n")[0].split(". ")[0]
    reason = reason.strip()[:160] or "the file ends early"
    return UsageError(
        f"cannot read checkpoint {path}: it is truncated, empty or not a checkpoint "
        f"({type(error).__name__}: {reason}). {fix}"
    )
