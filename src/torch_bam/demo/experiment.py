"""The demo's run: the comparison engine's first case, with the demo's extras.

The demo is :func:`torch_bam.compare.engine.run_study` with backbone ``small_cnn`` and the
variants ``none`` and ``bam``, reported under their networks' names (:data:`MODELS`), plus
three extras: the floor of the BAM network timed beside the two, the training runs' own step
times, and one checkpoint per network and seed. Its numbers, claims and pictures are made by
the same code as ``torch-bam compare --backbone small_cnn --variants none,bam``'s; only the
words of its report (:mod:`.report`) are its own. See :mod:`torch_bam.compare.engine` for the
order of work.
"""

from __future__ import annotations

from ..compare import options
from ..compare.cost import COST_TURNS
from ..compare.engine import Extras, run_study
from ..peers import attention_variants

BACKBONE = "small_cnn"
VARIANTS = ("none", "bam")  # the engine's variants, in the report under the networks' names
MODELS = ("small_cnn", "bam_small_cnn")
WITH_BAM = MODELS[1]
EXTRAS = Extras(floor=WITH_BAM, step_timing=True, checkpoints=True)


def run(
    epochs: int = 4,
    seed: int = 0,
    out: str = "runs/demo",
    dataset: str = "cluttered-digits",
    train_size: int = 2560,
    test_size: int = 1000,
    canvas: int = 32,
    batch_size: int = 64,
    lr: float = 0.1,
    progress: bool = True,
    data_root: str = "data",
    seeds: int = 3,
    val_size: int = 500,
) -> dict:
    """Run the demo; returns the report dict (also written to ``out/report.json``)."""
    options.check_extras("The demo")
    config = dict(
        epochs=epochs,
        seed=seed,
        seeds=seeds,
        dataset=dataset,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        canvas=canvas,
        batch_size=batch_size,
        lr=lr,
        backbone=BACKBONE,
        variants=list(VARIANTS),
        cost_turns=COST_TURNS,
    )
    options.check_study(config)
    created = options.check_out(out)  # made by this run: removed again if it fails
    from ..compare.splits import make_splits
    from .report import markdown

    splits = make_splits(dataset, train_size, val_size, test_size, canvas, seed, data_root)
    known = attention_variants()
    specs = {name: known[v] for name, v in zip(MODELS, VARIANTS, strict=True)}
    return run_study(
        "demo", splits, specs, config, out, created, markdown, progress, extras=EXTRAS
    )  # fmt: skip
