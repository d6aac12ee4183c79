"""``torch-bam compare``'s run: every variant over several seeds, measured once on a test split.

Order of work (every number in the report comes from this run):
1. check the options; build the train and validation splits (the demo's: cluttered digits,
   CIFAR or an image folder);
2. take the run directory (a lock), remove the files an earlier compare left there;
3. for each seed, train every variant with Lightning (:func:`torch_bam.compare.train.fit`), in
   an order that rotates from seed to seed; keep the weights of the best validation epoch;
4. build the test split and measure, on the same test images: top-1 error of each variant;
   where images have boxes, the pointing game of every spatial map (BAM's ``M_s``, CBAM's
   spatial map) beside controls that owe nothing to attention;
5. count parameters and multiply-adds, and time a training step and an inference of every
   variant in interleaved turns (:func:`torch_bam.demo.cost.measure`);
6. write the picture, then the report.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch
from torch import nn

from .._io import atomic_write_text, remove_stale_temporaries
from ..errors import UsageError
from ..peers import Variant, attention_variants

DEFAULT_VARIANTS = ("none", "bam", "se", "cbam", "eca", "bam-channel", "bam-spatial")
REPORT_FILES = ("report.md", "report.json", "error_vs_cost.png")
COST_TURNS = 10


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


def build_variant(backbone: str, variant: Variant, num_classes: int, in_chans: int, size: int):
    """The backbone with the variant's attention where its paper puts it (see
    :mod:`torch_bam.peers`): BAM at the bottlenecks (the registered ``bam_`` network where there
    is one), SE, ECA and CBAM in every residual block (``block_args``) or, in a network without
    residual blocks, after every stage."""
    from ..models import create_model, list_models
    from ..models.cifar import PreActResNet, ResNeXtCifar
    from ..models.resnet import ResNet
    from ..peers import add_attention

    kw = {"num_classes": num_classes}
    if in_chans != 3:
        kw["in_chans"] = in_chans
    example = torch.zeros(2, in_chans, size, size)
    if variant.kind is None:
        return create_model(backbone, **kw)
    if variant.kind == "bam" and variant.placement == "bottleneck":
        if f"bam_{backbone}" in list_models():
            return create_model(f"bam_{backbone}", **kw, **variant.kwargs)
    base = create_model(backbone, **kw)
    if variant.placement == "block" and isinstance(base, (ResNet, PreActResNet, ResNeXtCifar)):
        return create_model(backbone, **kw, block_args=dict(attn_layer=variant.kind))
    return add_attention(base, variant.kind, variant.placement, example, **variant.kwargs)


def spatial_maps(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(maps, logits)``: every spatial attention logit map ``[B, 1, h, w]`` in forward order
    (BAM's ``M_s``, CBAM's spatial map before its sigmoid), and the network's logits."""
    from ..bam import BAM

    found: list[torch.Tensor] = []
    handles = []
    for m in model.modules():
        if isinstance(m, BAM) and m.spatial_att is not None:
            target = m.spatial_att
        elif type(m).__name__ == "CbamModule":
            target = m.spatial.conv  # timm's CBAM: the 7x7 conv's map, before the gate
        else:
            continue
        handles.append(target.register_forward_hook(lambda _m, _i, out: found.append(out)))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return [f.detach() for f in found], logits


def _map_at(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor | None:
    same = [m for m in maps if tuple(m.shape[-2:]) == size]
    return same[-1] if same else None


def _batches(n: int, size: int = 250):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _measure(models, untrained, reference, x, y, boxes, box_side):
    """Per seed: test error of each variant and the pointing hit rate of each map."""
    from ..demo import saliency
    from ..insert import bottlenecks
    from ..pointing import centre_prior, chance_rate, intensity_map, pointing_hits

    seeds = list(models)
    names = list(models[seeds[0]])
    n, image_size = len(x), tuple(x.shape[-2:])
    errors = {v: [] for v in names}
    pointing = layer = size = None
    if boxes is not None:
        points = bottlenecks(models[seeds[0]][reference], x[:2])
        points = [p for p in points if p[2][0] * p[2][1] > 1]
        if points:
            layer, _, size = points[-1]  # the deepest bottleneck: where BAM's last map is
    spatial = []
    if layer is not None:
        first = models[seeds[0]]
        spatial = [v for v in names if _map_at(spatial_maps(first[v], x[:2])[0], size) is not None]
        fixed = {
            "chance (box area / image area)": chance_rate(boxes, image_size).mean().item(),
            "centre prior": pointing_hits(centre_prior(n, image_size), boxes, image_size)
            .float()
            .mean()
            .item(),
            "image intensity": pointing_hits(intensity_map(x, box_side), boxes, image_size)
            .float()
            .mean()
            .item(),
        }
        pointing = {k: [v] * len(seeds) for k, v in fixed.items()}
        for key in (f"{reference} feature norm", f"{reference} Grad-CAM"):
            pointing[key] = []
        for v in spatial:
            pointing[f"untrained {v}"] = []
            pointing[v] = []
    for seed in seeds:
        wrong = {v: 0 for v in names}
        hits = {k: 0 for k in (pointing or {}) if len(pointing[k]) < len(seeds)}
        for s in _batches(n):
            xb, yb = x[s], y[s]
            for v in names:
                model = models[seed][v]
                if v in spatial:
                    maps, logits = spatial_maps(model, xb)
                    hits[v] += int(pointing_hits(_map_at(maps, size), boxes[s], image_size).sum())
                    raw, _ = spatial_maps(untrained[seed][v], xb)
                    hits[f"untrained {v}"] += int(
                        pointing_hits(_map_at(raw, size), boxes[s], image_size).sum()
                    )
                elif v == reference and layer is not None:
                    norm, cam, logits = saliency.feature_norm_and_grad_cam(model, layer, xb)
                    hits[f"{v} feature norm"] += int(
                        pointing_hits(norm, boxes[s], image_size).sum()
                    )
                    hits[f"{v} Grad-CAM"] += int(pointing_hits(cam, boxes[s], image_size).sum())
                else:
                    with torch.no_grad():
                        logits = model.eval()(xb.to(_device_of(model))).cpu()
                wrong[v] += int((logits.argmax(1) != yb).sum())
        for v in names:
            errors[v].append(wrong[v] / n)
        for k in hits:
            pointing[k].append(hits[k] / n)
    return errors, pointing, layer


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
    try:
        import lightning  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UsageError(
            f"{e.name} is not installed. compare needs the train and viz extras: "
            f'pip install "torch-bam[train,viz]".'
        ) from None
    from ..demo import options

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
    numbers = ("epochs", "seeds", "train_size", "val_size", "test_size", "canvas", "batch_size")
    numbers += ("cost_turns",)
    options.check_positive(lr=lr, **{k: config[k] for k in numbers})
    options.check_run(seed, train_size, batch_size, dataset)
    specs = _check(backbone, variants, trainer)
    if trainer["devices"] != "auto":
        trainer["devices"] = int(trainer["devices"])
    created = options.check_out(out)
    from ..demo.splits import make_splits

    splits = make_splits(dataset, train_size, val_size, test_size, canvas, seed, data_root)

    def clear() -> None:  # the files an earlier compare wrote here, and its temporaries
        remove_stale_temporaries(out)
        for name in REPORT_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, name))

    return options.run_in(
        out, created, "torch-bam compare",
        clear,
        lambda: _run_locked(splits, specs, config, trainer, out, progress),
    )  # fmt: skip


def _run_locked(splits, specs, config, trainer, out, progress) -> dict:
    import json

    from ..flops import count_macs, count_params
    from ..viz.compare import plot_error_vs_cost
    from .report import markdown
    from .train import fit

    names = list(specs)
    reference = names[0]
    size = splits.image_size

    def builder(v):
        return lambda: build_variant(
            config["backbone"], specs[v], splits.num_classes, splits.in_chans, size
        )

    seeds = [config["seed"] + i for i in range(config["seeds"])]
    models: dict[int, dict[str, nn.Module]] = {s: {} for s in seeds}
    records: dict[int, dict] = {s: {} for s in seeds}
    runs = 0
    for turn, s in enumerate(seeds):
        shift = turn % len(names)  # each seed starts with another variant
        for v in names[shift:] + names[:shift]:
            runs += 1
            if progress:
                print(f"training {v}, seed {s} ({runs}/{len(seeds) * len(names)})", flush=True)
            models[s][v], records[s][v] = fit(
                builder(v),
                splits,
                s,
                config["epochs"],
                config["batch_size"],
                config["lr"],
                progress,
                trainer,
            )
    from ..demo.options import rank_zero

    if not rank_zero():
        return {}  # DDP: the other processes trained with rank 0; rank 0 measures and writes
    test_x, test_y, boxes = splits.test()
    # The test split on the GPU the runs trained on; the pointing game (small data) on the CPU.
    gpu = trainer["accelerator"] in ("gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if gpu and boxes is None else "cpu")
    models = {s: {v: models[s][v].to(device).eval() for v in names} for s in seeds}
    untrained = {}  # the networks before training: a control of the pointing game
    for s in seeds if boxes is not None else []:
        torch.manual_seed(s)
        untrained[s] = {v: builder(v)().eval() for v in names}

    errors, pointing, layer = _measure(
        models, untrained, reference, test_x, test_y, boxes, splits.box_side
    )
    cost = _cost(splits, seeds[0], config, names, builder, trainer)
    shape = (1, *test_x.shape[1:])
    per_variant = {}
    for v in names:
        model = models[seeds[0]][v]
        per_variant[v] = {
            "kind": specs[v].kind,
            "placement": specs[v].placement if specs[v].kind else None,
            "module_kwargs": specs[v].kwargs,
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
            "image_size": size,
        },
        "variants": per_variant,
        "pointing": pointing,
        "pointing_layer": layer,
        "cost": {"batch": cost["batch"], "turns": cost["turns"], "device": cost["device"]},
        "history": {v: [records[s][v].history for s in seeds] for v in names},
        "files": {"error_vs_cost": "error_vs_cost.png"},
    }
    text, claims = markdown(report)
    report["claims"] = claims
    plot_error_vs_cost(report, os.path.join(out, "error_vs_cost.png"))
    atomic_write_text(os.path.join(out, "report.json"), json.dumps(report, indent=2))
    atomic_write_text(os.path.join(out, "report.md"), text)  # last: it describes the rest
    print(text)
    print(f"wrote {out}/: report.md, report.json, error_vs_cost.png")
    return report


def _cost(splits, seed, config, names, builder, trainer) -> dict:
    """Every variant, fresh, timed in interleaved turns on one training batch."""
    from torch.utils.data import DataLoader

    from ..demo.cost import measure
    from ..train import ImageClassifier

    gpu = trainer["accelerator"] in ("gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    torch.manual_seed(seed)
    networks = {v: builder(v)().to(device) for v in names}
    loader = DataLoader(splits.train, batch_size=config["batch_size"], shuffle=False)
    x, y = ImageClassifier._unpack(next(iter(loader)))
    cost = measure(networks, x.to(device), y.to(device), config["cost_turns"])
    cost["device"] = str(device)
    return cost
