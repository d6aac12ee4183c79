"""Callbacks that make sure nothing is lost: a checkpoint on SIGTERM, RNG states in checkpoints,
and a final metrics JSON."""

from __future__ import annotations

import json
import random
import signal
import threading
from pathlib import Path

import lightning as L
import torch

from .._io import atomic_write_text

__all__ = ["MetricsJSON", "RNGState", "SaveOnSIGTERM"]


class SaveOnSIGTERM(L.Callback):
    """On SIGTERM (a scheduler's pre-emption, ``kill``), save ``last.ckpt`` before stopping.

    Lightning's own handler notes the signal and, after the current batch (a step boundary),
    raises ``SIGTERMException``; then this has the run's ``ModelCheckpoint(save_last=True)``
    save its last checkpoint (the file stays that callback's), so ``--resume`` continues from
    exactly that step. Under DDP the signal reaches the ranks at different moments (or only
    one), and Lightning's handler runs collectives inside the handler that then pair with the
    wrong ones and hang the run; so here the handler only notes the signal, and after every
    batch the ranks agree (one all-reduce) whether any got it, and all stop after that batch.
    """

    def __init__(self):
        self._sigterm = False

    def on_train_start(self, trainer, pl_module):
        self._sigterm = False
        # After Lightning registered its handlers; its teardown restores the original ones.
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame):
        self._sigterm = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.world_size <= 1:
            return
        flag = torch.tensor([float(self._sigterm)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():
            # Lightning's own flag: every rank stops after this same batch, counted as done.
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.utilities import rank_zero_warn
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        # Through ModelCheckpoint's own "last" save: it records last.ckpt as its own file, so
        # the resumed run replaces it rather than writing last-v1.ckpt beside a stale one.
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last:
                cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
                return
        rank_zero_warn(
            "SaveOnSIGTERM: no ModelCheckpoint(save_last=True) in this run, so nothing was "
            "saved on SIGTERM. Add one to keep the run's place."
        )


class RNGState(L.Callback):
    """Keep the random number generators' states in every checkpoint and restore them on resume.

    Lightning saves model, optimiser, scheduler and loop state, but not the RNGs; without them a
    resumed run draws different dropout masks (and other noise in a step) from an uninterrupted
    one. Data augmentation does not use these streams (the data modules' ``SeededSamples``).

    Lightning calls ``load_state_dict`` while it restores the callbacks, before the strategy's
    setup; from there to the first resumed step nothing draws from the global generators: the
    sanity check is skipped on a restart (and runs under ``isolate_rng`` anyway), and the data
    modules' loaders have their own generator, so creating their iterators draws nothing. Not
    later, in ``on_train_epoch_start``: Lightning does not call it for an epoch resumed midway.
    Under DDP each rank's states are gathered into the checkpoint (``{"ranks": [...]}``) and
    each rank restores its own; one process saves its states directly, as older checkpoints do.
    """

    def state_dict(self) -> dict:
        state = _rng_state()
        if _world_size() > 1:
            # Lightning builds the checkpoint on every rank (rank 0 writes it): a collective is safe
            states = [None] * _world_size()
            torch.distributed.all_gather_object(states, state)
            return {"ranks": states}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "ranks" in state_dict:
            ranks = state_dict["ranks"]
            rank = torch.distributed.get_rank() if _world_size() > 1 else 0
            if rank >= len(ranks):
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn(
                    f"The checkpoint holds RNG states of {len(ranks)} processes; ranks beyond "
                    "them keep their seeded generators."
                )
                return
            state_dict = ranks[rank]
        _set_rng_state(state_dict)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rng_state() -> dict:
    import numpy as np

    # Only tensors and plain Python values: checkpoints load with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsJSON(L.Callback):
    """Write ``metrics.json`` (every logged metric, per stage) in the run directory.

    Each stage's entry names the checkpoint its numbers belong to, ``"checkpoint": {"path",
    "global_step", "epoch"}`` as that file records them: for ``fit`` the last checkpoint
    (the model at the end of the run), for ``validate`` and ``test`` the one evaluated.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    @staticmethod
    def _checkpoint(trainer, stage: str) -> dict | None:
        from .checkpoints import progress, read_checkpoint

        if stage == "fit":
            cb = trainer.checkpoint_callback
            path = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        else:
            path = trainer.ckpt_path
        if not path or not Path(path).is_file():
            return None
        step, epoch = progress(read_checkpoint(path, ""))  # mmap: only its record index
        return {"path": str(path), "global_step": step, "epoch": epoch}

    def _write(self, trainer, stage: str):
        if not trainer.is_global_zero:
            return
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        metrics = trainer.callback_metrics
        data[stage] = {
            k: float(v)
            for k, v in metrics.items()
            # A metric logged per step and per epoch is kept by its two names only (Lightning
            # also keeps a bare alias of the epoch value): one name, one number.
            if torch.is_tensor(v) and not (f"{k}_step" in metrics and f"{k}_epoch" in metrics)
        }
        data[stage]["epoch"] = trainer.current_epoch
        data[stage]["global_step"] = trainer.global_step
        data[stage]["checkpoint"] = self._checkpoint(trainer, stage)
        # A uniquely named temporary file beside it: a reader never sees half a file.
        atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True))

    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, "fit")

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":
            self._write(trainer, "validate")

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, "test")
