"""Leave a shareable folder beside a run's checkpoints: ``<run_dir>/model``.

At the end of ``fit``, the checkpoint :class:`~lightning.pytorch.callbacks.ModelCheckpoint`
saved as best (its ``best_model_path``; its last one if it keeps no others) is written as timm
shares models (``config.json`` + ``model.safetensors``, :func:`torch_bam.save_pretrained`) with
a short model card (``README.md``: architecture, data, preprocessing, the run's validation
error from ``metrics.json``), and loaded back to check it gives the checkpoint's outputs.
This callback writes no checkpoint: the files stay ModelCheckpoint's. A folder that cannot be
written (a full disk, a model outside torch_bam's registry) is a warning, not a failed run:
``torch-bam export RUN_DIR --to folder --out PATH`` writes it later.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["ShareableFolder"]


class ShareableFolder(L.Callback):
    """On ``fit``'s end, write ``folder`` from the run's best checkpoint (rank 0 only).

    Place it after :class:`~torch_bam.train.callbacks.MetricsJSON`, whose ``metrics.json``
    the model card quotes.
    """

    def __init__(self, folder: str, run_dir: str):
        self.folder = Path(folder)
        self.run_dir = Path(run_dir)

    def on_fit_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        cb = trainer.checkpoint_callback
        best = getattr(cb, "best_model_path", "") or getattr(cb, "last_model_path", "")
        if not best or not Path(best).is_file():
            return
        from ..export import _metrics_line, export, load_source

        try:
            source = load_source(best)
            source.measured = _metrics_line(self.run_dir, Path(best))
            export(source, "folder", self.folder, runs=0)
        except Exception as e:  # the run's checkpoints are safe; the folder can come later
            rank_zero_warn(
                f"The shareable folder {self.folder} was not written ({type(e).__name__}: "
                f"{e}). Write it with: torch-bam export {self.run_dir} --to folder --out "
                f"{self.folder}"
            )
