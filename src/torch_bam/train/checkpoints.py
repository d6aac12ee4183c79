"""Checkpoints written whole beside their final name, and read back with a clear error.

Lightning's own writer (``TorchCheckpointIO``) stages the file in ``$TMPDIR`` and moves it into
place; when ``$TMPDIR`` is another filesystem (common on clusters) the move is a copy, and a kill
during it leaves a truncated ``last.ckpt`` and a stray temporary file. ``AtomicCheckpointIO``
writes through :func:`torch_bam._io.atomic_write` instead: a temporary file in the checkpoint's
own directory, fsynced, then renamed.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from .._io import atomic_write, load_weights_only
from ..errors import UsageError

__all__ = [
    "AtomicCheckpointIO",
    "RunCheckpoint",
    "check_weights",
    "progress",
    "read_checkpoint",
    "resume_checkpoint",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and take the process umask's mode."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            # Remote storage (s3://, ...) or options only Lightning's writer knows.
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def read_checkpoint(path: str | os.PathLike, fix: str) -> dict:
    """Load ``path`` (tensors only) or raise :class:`UsageError` naming it and ``fix``."""
    # mmap: only the record index is read; a truncated file has lost it (it is at the end).
    return load_weights_only(path, fix, mmap=True)


def resume_checkpoint(checkpoint_dir: str | os.PathLike) -> str:
    """The intact checkpoint in ``checkpoint_dir`` that has trained furthest.

    Progress is the ``global_step`` (then ``epoch``) each checkpoint records, read weights-only,
    never file times: a run directory copied without them (``cp -r``, a restore) resumes from
    the same place. Among equals ``last.ckpt`` wins (it holds the same step as the epoch's file).
    A truncated or corrupt one (a run killed while writing on a filesystem without atomic
    renames, a full disk) is skipped with a warning that names it.
    """
    d = os.fspath(checkpoint_dir)
    names = [n for n in os.listdir(d) if n.endswith(".ckpt")] if os.path.isdir(d) else []
    if not names:
        raise UsageError(
            f"--resume: nothing to resume in {d!r} (no .ckpt files). Start the run without "
            "--resume, or set --run_dir to the directory of the run to continue."
        )
    intact, broken = [], []
    for name in sorted(names):
        path = os.path.join(d, name)
        try:
            ckpt = read_checkpoint(path, "")
        except UsageError:
            broken.append(name)
            continue
        intact.append((*progress(ckpt), name == "last.ckpt", path))
    if intact:
        path = max(intact)[-1]
        if broken:
            rank_zero_warn(
                f"--resume: {', '.join(broken)} truncated or corrupt; resuming from "
                f"{os.path.basename(path)}, the intact checkpoint that trained furthest."
            )
        return path
    raise UsageError(
        f"--resume: no intact checkpoint in {d!r} ({', '.join(broken)} are truncated or "
        "corrupt). Delete them and start without --resume, or pass --ckpt_path to a good copy."
    )


def progress(checkpoint: dict) -> tuple[int, int]:
    """``(global_step, epoch)`` a Lightning checkpoint records (0 where it records none)."""

    def whole(key: str) -> int:
        value = checkpoint.get(key, 0) if isinstance(checkpoint, dict) else 0
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return whole("global_step"), whole("epoch")


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for a run directory that one run owns and a resumed run continues.

    - A file of the same name in it is this run's own (a resumed run reaching a step the
      stopped one had saved): it is replaced, not kept beside a ``-v1`` copy.
    - A run directory moved or copied elsewhere is still the same run: the paths the
      checkpoint recorded are read as paths in the new directory, so ``last.ckpt`` and the
      kept checkpoints stay managed (Lightning would otherwise forget them, with a warning).
    - ``resuming=True`` (a run that continues from a checkpoint in this directory): the files
      there are the run's own, so Lightning's "Checkpoint directory ... exists and is not
      empty" does not apply and is not raised. A new run into a directory with files still
      gets it.
    """

    def __init__(self, resuming: bool = False, **kwargs):
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(**kwargs)
        self.resuming = resuming

    # Lightning's private ``ModelCheckpoint.__warn_if_dir_not_empty``, by its mangled name;
    # tests/test_upstream_warnings.py fails if Lightning renames it and the warning returns.
    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath) -> None:
        if not self.resuming:
            super()._ModelCheckpoint__warn_if_dir_not_empty(dirpath)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if isinstance(old, str) and self.dirpath and old != self.dirpath:

            def moved(path):
                if isinstance(path, str) and path and os.path.dirname(path) == old:
                    return os.path.join(self.dirpath, os.path.basename(path))
                return path

            state_dict = dict(state_dict, dirpath=self.dirpath)
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if key in state_dict:
                    state_dict[key] = moved(state_dict[key])
            if isinstance(state_dict.get("best_k_models"), dict):
                state_dict["best_k_models"] = {
                    moved(k): v for k, v in state_dict["best_k_models"].items()
                }
        super().load_state_dict(state_dict)


def check_weights(model: torch.nn.Module, checkpoint: dict, path: str) -> None:
    """Raise :class:`UsageError` if ``checkpoint['state_dict']`` does not fit ``model``."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise UsageError(
            f"{path!r} holds no 'state_dict': it is not a Lightning checkpoint of torch-bam fit. "
            "Pass a .ckpt from <run_dir>/checkpoints/."
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {list(state[k].shape)} in the checkpoint, {list(own[k].shape)} in the model"
        for k in own
        if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    what = shapes[:2] + [f"missing {', '.join(missing[:3])}"] * bool(missing)
    what += [f"unexpected {', '.join(unexpected[:3])}"] * bool(unexpected)
    raise UsageError(
        f"The checkpoint {path!r} does not match the model ({'; '.join(what)}). Use the model "
        "and data it was trained with: pass the run's config, --config <run_dir>/logs/config.yaml."
    )
