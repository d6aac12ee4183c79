"""``torch-bam demo``: does BAM help a small CNN, and does its attention point at the object?

It trains ``small_cnn`` and ``bam_small_cnn`` (the same network, BAM before each pooling) with
Lightning, offline, on a CPU, over several seeds, and reports, with the spread over seeds:
- top-1 error on a test split used once, after training and the choice of epoch on a separate
  validation split;
- the pointing game on cluttered digits: BAM's spatial attention beside controls that owe
  nothing to BAM (chance, the centre prior, image intensity, the baseline's own feature norm
  and Grad-CAM, an untrained BAM network); a claim that BAM localises is made only if it beats
  the best control by more than the seed-to-seed spread;
- training speed: the median per-step time, the two models timed in alternating turns, and
  BAM's cost beside its floor.

It is ``torch-bam compare``'s first case: the same engine (:mod:`torch_bam.compare.engine`)
makes its numbers, claims and pictures; see :mod:`torch_bam.demo.experiment`.

Files in the run directory: ``report.md``, ``report.json``, ``learning_curves.png``,
``error_vs_cost.png``, ``attention.png``, one checkpoint per model and seed
(``<model>-seed<k>.pt``).
"""

from .experiment import MODELS, run

__all__ = ["MODELS", "run"]
