"""The demo's run: train both models over several seeds, then measure once on the test split.

Order of work (every number in the report comes from this run):
1. check the options; build the train and validation splits;
2. take the run directory (a lock), remove the files an earlier demo left there;
3. for each seed, train ``small_cnn`` and ``bam_small_cnn`` with Lightning, in alternating
   order (seed 0: baseline first, seed 1: BAM first, ...), recording per-step wall time; keep
   the weights of the epoch with the lowest validation error;
4. build the test split and measure, on the same test images: top-1 error, the pointing game
   of BAM and of every control;
5. time a training step and an inference of the baseline, the BAM network and its floor in
   interleaved turns (:mod:`torch_bam.demo.cost`), a few seconds;
6. write the checkpoints, the pictures, and last the report.
"""

from __future__ import annotations

import contextlib
import glob
import os
from statistics import median

import torch
from torch import nn

from .._io import atomic_write_text, remove_stale_temporaries
from ..errors import UsageError
from . import options

MODELS = ("small_cnn", "bam_small_cnn")
BASELINE, WITH_BAM = MODELS
REPORT_FILES = ("report.md", "report.json", "learning_curves.png", "attention.png")
# The maps that depend on the seed (the networks'), in the report's order; BAM's is last.
SEEDED_MAPS = (
    f"{BASELINE} feature norm",
    f"{BASELINE} Grad-CAM",
    f"untrained {WITH_BAM} BAM",
    f"{WITH_BAM} BAM",
)
WARMUP_STEPS = 5  # per training run: the first steps pay for allocation and are not timed
COST_TURNS = 10  # interleaved turns of the cost measurement (a few seconds at the defaults)


def _checkpoint_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}.pt"


def _clear_earlier_run(out: str) -> None:
    """Remove the files a demo writes, so none from an earlier run outlives this run's report."""
    remove_stale_temporaries(out)
    names = [os.path.join(out, f) for f in REPORT_FILES]
    for model in MODELS:
        names.append(os.path.join(out, f"{model}.pt"))  # the one-seed demo's names
        names += glob.glob(os.path.join(glob.escape(out), f"{model}-seed*.pt"))
    for path in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fit(name, splits, seed, epochs, batch_size, lr, progress):
    """Train one model with Lightning; returns ``(model with best-val weights, Record)``."""
    from ..compare.train import fit

    return fit(name, splits, seed, epochs, batch_size, lr, progress)


def _untrained(name: str, splits, seed: int) -> nn.Module:
    from ..models import create_model

    torch.manual_seed(seed)
    kwargs = {"in_chans": splits.in_chans} if splits.in_chans != 3 else {}
    return create_model(name, num_classes=splits.num_classes, **kwargs).eval()


def _batches(n: int, size: int = 250):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _measure(models, untrained, x, y, boxes, box_side):
    """Per seed: test error of each model and pointing hit rate of each map, on ``x``."""
    from ..pointing import centre_prior, chance_rate, intensity_map, pointing_hits
    from . import saliency

    n, size = len(x), tuple(x.shape[-2:])
    seeds = list(models)
    errors = {m: [] for m in MODELS}
    pointing = None
    layer = None
    if boxes is not None:
        layer = saliency.deepest_spatial_bam(models[seeds[0]][WITH_BAM], x)
    if layer is not None:
        fixed = {
            "chance (box area / image area)": chance_rate(boxes, size).mean().item(),
            "centre prior": pointing_hits(centre_prior(n, size), boxes, size).float().mean(),
            "image intensity": pointing_hits(intensity_map(x, box_side), boxes, size)
            .float()
            .mean(),
        }
        # These do not depend on the seed: the same value for every seed (spread 0).
        pointing = {k: [float(v)] * len(seeds) for k, v in fixed.items()}
        pointing.update({k: [] for k in SEEDED_MAPS})
    for seed in seeds:
        base, bam = models[seed][BASELINE], models[seed][WITH_BAM]
        wrong = {m: 0 for m in MODELS}
        hits = {k: 0 for k in SEEDED_MAPS}
        for s in _batches(n):
            xb, yb = x[s], y[s]
            if layer is None:
                with torch.no_grad():
                    logits = {BASELINE: base(xb), WITH_BAM: bam(xb)}
            else:
                norm, cam, base_logits = saliency.feature_norm_and_grad_cam(base, layer, xb)
                spatial, _, bam_logits = saliency.bam_spatial(bam, layer, xb)
                raw, _, _ = saliency.bam_spatial(untrained[seed], layer, xb)
                logits = {BASELINE: base_logits, WITH_BAM: bam_logits}
                for key, m in zip(SEEDED_MAPS, (norm, cam, raw, spatial), strict=True):
                    hits[key] += int(pointing_hits(m, boxes[s], size).sum())
            for m in MODELS:
                wrong[m] += int((logits[m].argmax(1) != yb).sum())
        for m in MODELS:
            errors[m].append(wrong[m] / n)
        if pointing is not None:
            for key in hits:
                pointing[key].append(hits[key] / n)
    return errors, pointing, layer


def _figure(models, untrained, x, y, boxes, box_side, layer, path, num_images=4):
    """The attention figure for the first seed's models on the first test images."""
    from ..pointing import intensity_map
    from ..viz.demo_figures import plot_pointing_maps
    from . import saliency

    seed = next(iter(models))
    xb, yb, bb = x[:num_images], y[:num_images], boxes[:num_images]
    base, bam = models[seed][BASELINE], models[seed][WITH_BAM]
    norm, cam, base_logits = saliency.feature_norm_and_grad_cam(base, layer, xb)
    spatial, channel, bam_logits = saliency.bam_spatial(bam, layer, xb)
    raw, _, _ = saliency.bam_spatial(untrained[seed], layer, xb)
    untrained_title, bam_title = "untrained BAM: sigmoid(M_s)", f"BAM {layer}: sigmoid(M_s)"
    maps = {
        "image intensity": intensity_map(xb, box_side),
        f"{BASELINE}: feature norm": norm,
        f"{BASELINE}: Grad-CAM": cam,
        untrained_title: torch.sigmoid(raw),
        bam_title: torch.sigmoid(spatial),
    }
    predictions = {BASELINE: base_logits.argmax(1), "BAM": bam_logits.argmax(1)}
    return plot_pointing_maps(
        xb,
        bb,
        yb,
        maps,
        predictions,
        path,
        probabilities=(untrained_title, bam_title),
        channel_gate=torch.sigmoid(channel),
        bam_name=layer,
    )


def _cost(splits, seed: int, batch_size: int, macs: dict[str, int]) -> dict:
    """Baseline, BAM network and its floor, timed in interleaved turns on one training batch
    (:mod:`torch_bam.demo.cost`); fresh networks, so the trained ones stay as they are."""
    from torch.utils.data import DataLoader

    from ..floor import bam_floor
    from ..train import ImageClassifier
    from .cost import FLOOR, measure

    base, bam = _untrained(BASELINE, splits, seed), _untrained(WITH_BAM, splits, seed)
    batch = next(iter(DataLoader(splits.train, batch_size=batch_size, shuffle=False)))
    x, y = ImageClassifier._unpack(batch)
    cost = measure({BASELINE: base, WITH_BAM: bam, FLOOR: bam_floor(bam)}, x, y, COST_TURNS)
    cost["macs"] = dict(macs)
    cost["macs_ratio"] = macs[WITH_BAM] / macs[BASELINE]
    return cost


def _timing(records: dict[int, dict[str, object]], order: list[tuple[int, str]]) -> dict:
    """Median per-step time of each model over all its timed steps, and per-turn medians."""
    from .claims import summarize

    def quantile(v, q):
        v = sorted(v)
        return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]

    out: dict = {"order": [f"{m} (seed {s})" for s, m in order], "models": {}}

    def timed(record):
        # Skip the warm-up steps, but keep at least half of a short run's steps.
        steps = record.step_seconds
        return steps[min(WARMUP_STEPS, len(steps) // 2) :]

    for m in MODELS:
        turns = [timed(records[s][m]) for s in records]
        steps = [t for turn in turns for t in turn]
        if not steps:
            out["models"][m] = None
            continue
        out["models"][m] = {
            "steps_timed": len(steps),
            "median_s": median(steps),
            "p25_s": quantile(steps, 0.25),
            "p75_s": quantile(steps, 0.75),
            "per_turn_median_s": [median(turn) for turn in turns],
        }
    if all(out["models"].values()):
        a, b = out["models"][BASELINE], out["models"][WITH_BAM]
        pairs = zip(a["per_turn_median_s"], b["per_turn_median_s"], strict=True)
        ratios = [tb / ta for ta, tb in pairs]
        out["ratio"] = {
            "direction": f"{WITH_BAM} / {BASELINE} (above 1: BAM's steps are slower)",
            "median_ratio": b["median_s"] / a["median_s"],
            "per_seed": ratios,
            "summary": summarize(ratios),
        }
    return out


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
    try:
        import lightning  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UsageError(
            f"{e.name} is not installed. The demo needs the train and viz extras: "
            f'pip install "torch-bam[train,viz]" (or pip install ".[train,viz]" in a clone).'
        ) from None
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
    )
    # Every option but the seed (0 is fine) and the dataset's name must be positive.
    options.check_positive(**{k: v for k, v in config.items() if k not in ("seed", "dataset")})
    options.check_run(seed, train_size, batch_size, dataset)
    created = options.check_out(out)  # made by this run: removed again if it fails
    from .splits import make_splits

    splits = make_splits(dataset, train_size, val_size, test_size, canvas, seed, data_root)
    return options.run_in(
        out, created, "torch-bam demo",
        lambda: _clear_earlier_run(out),
        lambda: _run_locked(splits, config, out, progress),
    )  # fmt: skip


def _run_locked(splits, config: dict, out: str, progress: bool) -> dict:
    import json

    from ..data.datamodules import preprocessing_for
    from ..flops import count_macs
    from ..viz.checkpoint import save_checkpoint
    from ..viz.curves import plot_learning_curves
    from .report import markdown

    seeds = [config["seed"] + i for i in range(config["seeds"])]
    models: dict[int, dict[str, nn.Module]] = {s: {} for s in seeds}
    records: dict[int, dict] = {s: {} for s in seeds}
    order = []
    for turn, s in enumerate(seeds):
        for name in MODELS if turn % 2 == 0 else MODELS[::-1]:
            order.append((s, name))
            if progress:
                print(f"training {name}, seed {s} ({len(order)}/{2 * len(seeds)})", flush=True)
            models[s][name], records[s][name] = _fit(
                name,
                splits,
                s,
                config["epochs"],
                config["batch_size"],
                config["lr"],
                progress,
            )
    untrained = {s: _untrained(WITH_BAM, splits, s) for s in seeds}

    # The test split: built here, after every model is trained and chosen, and used once.
    test_x, test_y, boxes = splits.test()
    errors, pointing, layer = _measure(models, untrained, test_x, test_y, boxes, splits.box_side)

    per_model, macs_of = {}, {}
    for name in MODELS:
        model = models[seeds[0]][name]
        macs = macs_of[name] = count_macs(model, tuple(test_x[:1].shape))
        per_model[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "gflops": macs / 1e9,
            "test_top1_error": errors[name],
            "val_top1_error_best": [records[s][name].best_val_error for s in seeds],
            "best_epoch": [records[s][name].best_epoch for s in seeds],
        }
    for s in seeds:
        for name in MODELS:
            save_checkpoint(  # written whole or not at all
                os.path.join(out, _checkpoint_name(name, s)),
                name,
                models[s][name],
                num_classes=splits.num_classes,
                # What the model saw: the data module's size, resize, crop, mean and std.
                **preprocessing_for(config["dataset"], splits.image_size),
                extra={"dataset": config["dataset"], "seed": s, "epochs": config["epochs"]},
            )
    # BAM's cost beside its floor: after training, so no training run is slowed by it.
    cost = _cost(splits, seeds[0], config["batch_size"], macs_of)
    histories = {m: [records[s][m].history for s in seeds] for m in MODELS}
    files = {"learning_curves": "learning_curves.png"}
    plot_learning_curves(histories, os.path.join(out, files["learning_curves"]))
    if pointing is not None:
        files["attention"] = "attention.png"
        _figure(
            models,
            untrained,
            test_x,
            test_y,
            boxes,
            splits.box_side,
            layer,
            os.path.join(out, files["attention"]),
        )
    report = {
        "config": config,
        "seeds": seeds,
        "splits": {
            "train": len(splits.train),
            "val": len(splits.val_y),
            "test": len(test_y),
            "image_size": splits.image_size,
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "models": per_model,
        "pointing": pointing,
        "pointing_layer": layer,
        "timing": _timing(records, order),
        "cost": cost,
        "history": histories,
        "files": files,
        "checkpoints": [_checkpoint_name(m, s) for s in seeds for m in MODELS],
    }
    text, claims = markdown(report)
    report["claims"] = claims
    atomic_write_text(os.path.join(out, "report.json"), json.dumps(report, indent=2))
    atomic_write_text(os.path.join(out, "report.md"), text)  # last: it describes the rest
    print(text)
    print(f"wrote {out}/: report.md, report.json, " + ", ".join(files.values()))
    return report
