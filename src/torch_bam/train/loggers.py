"""A run's ``metrics.csv`` that a resumed run continues instead of starting afresh.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. ``RunCSVLogger``
given ``resume_step`` keeps the rows logged up to that step (those the checkpoint had seen) and
appends the resumed run's rows after them, so the file covers the whole run once. Rows logged
after the checkpoint (by the run that was stopped) are dropped: the resumed run logs them again.
"""

from __future__ import annotations

import csv
import io
import os
import warnings

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .._io import atomic_write_text

__all__ = ["RunCSVLogger"]


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/<version>/metrics.csv``, continued on resume."""

    def __init__(self, save_dir: str, version: str, resume_step: int | None = None):
        super().__init__(save_dir, name="", version=version)
        self.resume_step = resume_step

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is not None or rank_zero_only.rank != 0:
            return super().experiment
        kept, header = self._rows_to_keep()
        with warnings.catch_warnings():
            if kept is not None:  # its "previous log files will be deleted" is not so here
                warnings.filterwarnings("ignore", message="Experiment logs directory")
            experiment = super().experiment  # Lightning's writer; it removes the old file
        if kept is not None:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(experiment.metrics_file_path, text.getvalue())
            experiment.metrics_keys = list(header)  # later rows append under this header
        return experiment

    def _rows_to_keep(self) -> tuple[list[dict] | None, list[str]]:
        path = os.path.join(self.log_dir, _ExperimentWriter.NAME_METRICS_FILE)
        if self.resume_step is None or not os.path.isfile(path):
            return None, []
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        return [r for r in rows if r.get("step") and int(r["step"]) < self.resume_step], header
