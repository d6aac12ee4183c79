"""``torch-bam compare``: does BAM help on my data, against what users would try instead?

It trains a backbone with each variant (by default: none, BAM, SE, CBAM, ECA, BAM channel-only,
BAM spatial-only; see :func:`torch_bam.peers.attention_variants`) over several seeds, with
Lightning, and reports in the demo's way: test error mean ± std and per seed, which differences
exceed the seed-to-seed spread, parameters, multiply-adds and measured step-time ratios, and on
images with boxes the pointing game of every spatial map beside controls.

One engine (:mod:`.engine`) runs it, and ``torch-bam demo`` too: the demo is its first case
(``small_cnn`` with ``none`` and ``bam`` on cluttered digits) with a few extras, so the two
commands' statistics, claims and pictures are made by the same code. The pieces, one idea per
module: the data splits (:mod:`.splits`), the options both check (:mod:`.options`), the networks
(:mod:`.variants`), training (:mod:`.train`, :mod:`.callbacks`), the measurements on the test
split (:mod:`.measure`, :mod:`.saliency`), the cost (:mod:`.cost`, :mod:`.timing`), the claims
(:mod:`.claims`), the pictures (:mod:`.pictures`) and the report (:mod:`.report`).

Files in the run directory: ``report.md``, ``report.json``, ``learning_curves.png``,
``error_vs_cost.png`` and, where the images have boxes, ``attention.png``.
"""

from .experiment import DEFAULT_VARIANTS, run
from .variants import build_variant

__all__ = ["DEFAULT_VARIANTS", "build_variant", "run"]
