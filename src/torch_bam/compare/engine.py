"""The engine of ``torch-bam compare`` and ``torch-bam demo``: variants of one backbone, trained
over several seeds, measured once, reported with their spread.

Order of work (every number in a report comes from its run):
1. the command checks its options and builds the train and validation splits (:mod:`.splits`);
2. :func:`run_study` takes the run directory (a lock) and removes the files an earlier run of
   either command left there;
3. for each seed, every variant is trained with Lightning (:func:`.train.fit`), in an order that
   rotates from seed to seed; each run keeps the weights of its best validation epoch;
4. the test split is built and measured, once (:mod:`.measure`): each variant's top-1 error and,
   where the images have boxes, the pointing game of every spatial map beside its controls;
5. parameters and multiply-adds are counted, and a training step and an inference of every
   variant (and, if asked, of a BAM variant's floor) are timed in interleaved turns
   (:mod:`.cost`);
6. the claims follow from the numbers (:func:`.claims.claims_of`); the checkpoints (if asked),
   the pictures (:mod:`.pictures`), ``report.json`` and last ``report.md`` (in the command's
   words: ``render``) are written, each whole or not at all.

The demo is this engine run with backbone ``small_cnn`` and the variants ``none`` and ``bam``
under their networks' names (``small_cnn``, ``bam_small_cnn``), with its :class:`Extras`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._io import atomic_write_text, remove_stale_temporaries
from ..peers import Variant
from . import options
from .pictures import FILES

__all__ = ["REPORT_FILES", "Extras", "machine", "run_study"]

REPORT_FILES = ("report.md", "report.json", *FILES.values())


@dataclass(frozen=True)
class Extras:
    """What a command adds to the engine's run (the demo: all three).

    floor: a BAM variant whose floor (:func:`torch_bam.floor.bam_floor`) is timed beside the
        variants, under the name :data:`.cost.FLOOR`.
    step_timing: report the training runs' own step times (:func:`.timing.step_times`).
    checkpoints: write each trained network as ``<network>-seed<k>.pt``
        (:func:`torch_bam.viz.save_checkpoint`); every variant must be a registered network
        (:func:`.variants.network_name`).
    """

    floor: str | None = None
    step_timing: bool = False
    checkpoints: bool = False


def machine(trainer: dict) -> str:
    """The machine in words: CPU model and cores, or the GPUs the trainer asked for."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    where = f"{cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
    if trainer["accelerator"] in ("gpu", "cuda") and torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} x {trainer['devices']}; host {where}"
    return f"{where}; torch {torch.__version__}"


def _device(trainer: dict) -> torch.device:
    gpu = trainer["accelerator"] in ("gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def run_study(
    command: str,
    splits,
    specs: dict[str, Variant],
    config: dict,
    out: str,
    created: list[str],
    render: Callable[[dict], str],
    progress: bool = True,
    trainer: dict | None = None,
    extras: Extras = Extras(),
) -> dict:
    """Run every variant of ``specs`` (name in the report -> :class:`~torch_bam.peers.Variant`;
    the first is the reference) on ``splits`` in the run directory ``out``; returns the report
    dict (also written to ``out/report.json``).

    ``config`` holds ``backbone``, ``seed``, ``seeds``, ``epochs``, ``batch_size``, ``lr``,
    ``cost_turns`` and ``dataset`` (and whatever else the command records); ``created``: the
    directories :func:`.options.check_out` found still to create; ``render(report)``: the text
    of ``report.md``; ``trainer``: Lightning Trainer options (default: one CPU).
    """
    from .variants import network_name

    trainer = dict(trainer or {"accelerator": "cpu", "devices": 1})
    networks = {v: network_name(config["backbone"], specs[v]) for v in specs}
    if extras.checkpoints and None in networks.values():
        raise ValueError("run_study: checkpoints need every variant to be a registered network.")

    def clear() -> None:  # the files an earlier run wrote here, and its temporaries
        remove_stale_temporaries(out)
        names = [os.path.join(out, f) for f in REPORT_FILES]
        for n in networks.values() if extras.checkpoints else ():
            names.append(os.path.join(out, f"{n}.pt"))  # the one-seed demo's names
            names += glob.glob(os.path.join(glob.escape(out), f"{n}-seed*.pt"))
        for path in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def study() -> dict:
        return _run_locked(splits, specs, config, trainer, out, progress, render, extras, networks)

    return options.run_in(out, created, f"torch-bam {command}", clear, study)


def _run_locked(splits, specs, config, trainer, out, progress, render, extras, networks) -> dict:
    from ..flops import count_macs, count_params
    from .claims import claims_of
    from .measure import measure
    from .pictures import NUM_IMAGES, attention_maps, write_pictures
    from .timing import step_times
    from .train import fit
    from .variants import build_variant

    names = list(specs)
    reference = names[0]

    def build(v: str) -> nn.Module:
        return build_variant(
            config["backbone"], specs[v], splits.num_classes, splits.in_chans, splits.image_size
        )

    def untrained(seed: int, v: str) -> nn.Module:
        """The network ``fit`` starts from for this seed: a control of the pointing game."""
        torch.manual_seed(seed)
        return build(v).eval()

    seeds = [config["seed"] + i for i in range(config["seeds"])]
    models: dict[int, dict[str, nn.Module]] = {s: {} for s in seeds}
    records: dict[int, dict] = {s: {} for s in seeds}
    order: list[tuple[int, str]] = []
    for turn, s in enumerate(seeds):
        shift = turn % len(names)  # each seed starts with another variant
        for v in names[shift:] + names[:shift]:
            order.append((s, v))
            if progress:
                print(
                    f"training {v}, seed {s} ({len(order)}/{len(seeds) * len(names)})", flush=True
                )
            models[s][v], records[s][v] = fit(
                lambda v=v: build(v),
                splits,
                s,
                config["epochs"],
                config["batch_size"],
                config["lr"],
                progress,
                trainer,
            )
    if not options.rank_zero():
        return {}  # DDP: the other processes trained with rank 0; rank 0 measures and writes

    # The test split: built here, after every network is trained and chosen, and used once.
    test_x, test_y, boxes = splits.test()
    # On the GPU the runs trained on; the pointing game (small data) on the CPU.
    device = _device(trainer) if boxes is None else torch.device("cpu")
    models = {s: {v: models[s][v].to(device).eval() for v in names} for s in seeds}
    errors, pointing, site = measure(
        models, untrained, reference, test_x, test_y, boxes, splits.box_side
    )
    # Every variant's cost: after training, so no training run is slowed by it.
    cost = _cost(splits, seeds[0], config, names, build, trainer, extras.floor)
    shape = (1, *test_x.shape[1:])
    per_variant = {}
    for v in names:
        model = models[seeds[0]][v]
        per_variant[v] = {
            "kind": specs[v].kind,
            "placement": specs[v].placement if specs[v].kind else None,
            "module_kwargs": specs[v].kwargs,
            "network": networks[v],
            "parameters": count_params(model),
            "macs": count_macs(model, shape),
            "test_top1_error": errors[v],
            "val_top1_error_best": [records[s][v].best_val_error for s in seeds],
            "best_epoch": [records[s][v].best_epoch for s in seeds],
            "train_step_ratio": cost["ratios"]["train_step"].get(v, 1.0),
            "inference_ratio": cost["ratios"]["inference"].get(v, 1.0),
        }
    report = {
        "config": config,
        "seeds": seeds,
        "reference": reference,
        "machine": machine(trainer),
        "splits": {
            "train": len(splits.train),
            "val": len(splits.val_y),
            "test": len(test_y),
            "image_size": splits.image_size,
        },
        "variants": per_variant,
        "pointing": pointing,
        "pointing_layer": site.layer if site else None,
        "cost": cost,
        "history": {v: [records[s][v].history for s in seeds] for v in names},
    }
    if extras.step_timing:
        report["timing"] = step_times(records, order, reference)
    report["claims"] = claims_of(report)
    if extras.checkpoints:
        report["checkpoints"] = _save_checkpoints(models, networks, splits, config, out)
    attention = None
    if site is not None and site.spatial:
        first, k = models[seeds[0]], NUM_IMAGES

        def attention():
            panels = attention_maps(
                first,
                lambda v: untrained(seeds[0], v),
                reference,
                site,
                test_x[:k],
                splits.box_side,
            )
            return test_x[:k], boxes[:k], test_y[:k], panels

    report["files"] = write_pictures(report, out, attention)
    text = render(report)
    atomic_write_text(os.path.join(out, "report.json"), json.dumps(report, indent=2))
    atomic_write_text(os.path.join(out, "report.md"), text)  # last: it describes the rest
    print(text)
    print(f"wrote {out}/: report.md, report.json, " + ", ".join(report["files"].values()))
    return report


def _save_checkpoints(models, networks, splits, config, out) -> list[str]:
    """Every trained network, written whole or not at all, with what it saw: the data module's
    size, resize, crop, mean and std."""
    from ..data.datamodules import preprocessing_for
    from ..viz.checkpoint import save_checkpoint

    written = []
    for s, by_variant in models.items():
        for v, model in by_variant.items():
            name = f"{networks[v]}-seed{s}.pt"
            save_checkpoint(
                os.path.join(out, name),
                networks[v],
                model,
                num_classes=splits.num_classes,
                **preprocessing_for(config["dataset"], splits.image_size),
                extra={"dataset": config["dataset"], "seed": s, "epochs": config["epochs"]},
            )
            written.append(name)
    return written


def _cost(splits, seed: int, config: dict, names, build, trainer, floor: str | None) -> dict:
    """Every variant (and ``floor``'s floor), fresh, timed in interleaved turns on one training
    batch (:func:`.cost.measure`); the trained networks stay as they are."""
    from torch.utils.data import DataLoader

    from ..train import ImageClassifier
    from .cost import FLOOR, measure

    device = _device(trainer)
    networks = {}
    for v in names:
        torch.manual_seed(seed)
        networks[v] = build(v).to(device)
    if floor is not None:
        from ..floor import bam_floor

        networks[FLOOR] = bam_floor(networks[floor])
    loader = DataLoader(splits.train, batch_size=config["batch_size"], shuffle=False)
    x, y = ImageClassifier._unpack(next(iter(loader)))
    cost = measure(networks, x.to(device), y.to(device), config["cost_turns"])
    cost["device"] = str(device)
    return cost
