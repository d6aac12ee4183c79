"""``torch-bam compare``: does BAM help on my data, against what users would try instead?

It trains a backbone with each variant (by default: none, BAM, SE, CBAM, ECA, BAM channel-only,
BAM spatial-only; see :func:`torch_bam.peers.attention_variants`) over several seeds, with
Lightning, and reports in the demo's way: test error mean ± std and per seed, which differences
exceed the seed-to-seed spread, parameters, multiply-adds and measured step-time ratios, and on
images with boxes the pointing game of every spatial map beside controls. ``torch-bam demo`` is
its first case (two variants on cluttered digits) and shares this package's training
(:mod:`.train`), statistics and claims (:mod:`.claims`) and report cells (:mod:`.report`).

Files in the run directory: ``report.md``, ``report.json``, ``error_vs_cost.png``.
"""

from .experiment import DEFAULT_VARIANTS, build_variant, run

__all__ = ["DEFAULT_VARIANTS", "build_variant", "run"]
