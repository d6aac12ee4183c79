"""``torch-bam compare``'s run: its options, checked, then the engine (:mod:`.engine`).

The engine trains every variant over several seeds, measures each once on a test split, and
writes the report and pictures; see :mod:`torch_bam.compare.engine` for the order of work.
"""

from __future__ import annotations

from ..errors import UsageError
from ..peers import Variant, attention_variants
from .cost import COST_TURNS

DEFAULT_VARIANTS = ("none", "bam", "se", "cbam", "eca", "bam-channel", "bam-spatial")


def _check(backbone: str, variants: list[str], trainer: dict) -> dict[str, Variant]:
    from ..models import list_models

    known = attention_variants()
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise UsageError(
            f"unknown --variants {', '.join(unknown)}; use names from {', '.join(known)}."
        )
    if len(set(variants)) != len(variants) or len(variants) < 2:
        raise UsageError(
            f"--variants {','.join(variants)}: name two or more different variants (the first "
            f"is the reference, e.g. none,bam)."
        )
    bases = [m for m in list_models() if not m.startswith("bam_")]
    if backbone not in bases:
        raise UsageError(f"unknown --backbone {backbone!r}; use one of {', '.join(bases)}.")
    if trainer["devices"] != "auto":
        try:
            if int(trainer["devices"]) < 1:
                raise ValueError
        except ValueError:
            raise UsageError(
                f"--devices {trainer['devices']!r} must be a positive number or auto."
            ) from None
    return {v: known[v] for v in variants}


def run(
    backbone: str = "small_cnn",
    variants: list[str] | tuple[str, ...] = DEFAULT_VARIANTS,
    seeds: int = 3,
    seed: int = 0,
    epochs: int = 3,
    dataset: str = "cluttered-digits",
    train_size: int = 1536,
    val_size: int = 500,
    test_size: int = 1000,
    canvas: int = 32,
    batch_size: int = 64,
    lr: float = 0.1,
    out: str = "runs/compare",
    data_root: str = "data",
    accelerator: str = "cpu",
    devices: str | int = 1,
    strategy: str = "auto",
    precision: str | None = None,
    progress: bool = True,
    cost_turns: int = COST_TURNS,
) -> dict:
    """Run the comparison; returns the report dict (also written to ``out/report.json``).

    The options are the command's (``torch-bam compare --help``); ``cost_turns``: the
    interleaved turns of the step-time measurement.
    """
    from . import options

    options.check_extras("compare")
    variants = list(variants)
    trainer = dict(accelerator=accelerator, devices=str(devices), strategy=strategy)
    if precision is not None:  # Lightning's, e.g. "bf16-mixed" on a GPU
        trainer["precision"] = precision
    config = dict(
        backbone=backbone,
        variants=variants,
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
        **trainer,
        cost_turns=cost_turns,
    )
    options.check_study(config)
    specs = _check(backbone, variants, trainer)
    if trainer["devices"] != "auto":
        trainer["devices"] = int(trainer["devices"])
    created = options.check_out(out)
    from .engine import run_study
    from .report import markdown
    from .splits import make_splits

    splits = make_splits(dataset, train_size, val_size, test_size, canvas, seed, data_root)
    return run_study(
        "compare", splits, specs, config, out, created, markdown, progress, trainer
    )  # fmt: skip
