"""The demo's report in Markdown: tables of the measured numbers, and the claims in words.

Every number comes from the report dict the comparison engine builds
(:mod:`torch_bam.compare.engine`), and every claim is one of the engine's
(:func:`torch_bam.compare.claims.claims_of`), as in ``torch-bam compare``'s report; only the
words and the layout are the demo's: one column per network, the localisation verdict in full,
the training runs' step times and BAM's cost beside its floor.
"""

from __future__ import annotations

from ..compare.claims import compare, summarize
from ..compare.report import hit_rate_table, pct, per_seed_cell, pictures, spread_cell, table


def error_sentence(report: dict) -> str:
    """The error of the BAM network against the baseline, and what the demo claims from it."""
    base, bam = list(report["variants"])
    c = report["claims"]["error"][f"{bam} vs {base}"]
    if c["exceeds"]:
        verdict = f"{'BAM lowers' if c['difference'] < 0 else 'BAM raises'} the error here."
    else:
        verdict = "The demo does not claim that either network has the lower error."
    return f"Test top-1 error: {c['sentence']}. {verdict}"


def localisation_verdict(report: dict) -> str:
    """The order of the pointing table in words, then what the engine's claim allows."""
    bam = list(report["variants"])[1]
    claim = report["claims"]["localisation"][bam]
    return _localisation_verdict(report["pointing"], bam, claim["claimed"], claim["best_control"])


# Above this hit rate, a control leaves fewer than 1 image in 10 on which BAM could do better:
# the task is too easy to show that BAM localises.
SATURATED = 0.9


def _localisation_verdict(pointing: dict, bam_key: str, claimed: bool, best: str) -> str:
    """The order the table shows, in words, then what may be claimed from it."""
    mean = {k: summarize(v)["mean"] for k, v in pointing.items()}
    order = sorted(mean, key=mean.get, reverse=True)
    ranking = (
        "Hit rates, highest first: "
        + ", ".join(f"{'BAM' if k == bam_key else k} {pct(mean[k])}" for k in order)
        + "."
    )
    if claimed:
        return (
            f"BAM localises the digit better than every control: its hit rate beats the best "
            f"control ({best}) by more than the seed-to-seed spread. {ranking}"
        )
    bam = pointing[bam_key]
    better = [k for k in order if k != bam_key and compare(pointing[k], bam).difference > 0]
    beyond = [k for k in better if compare(pointing[k], bam).exceeds]
    if beyond:
        names = " and ".join(f"{k} ({pct(mean[k])})" for k in beyond)
        verb = "beats" if len(beyond) == 1 else "beat"
        standing = f"{names} {verb} BAM ({pct(mean[bam_key])}) by more than the seed-to-seed spread"
    elif better:
        standing = (
            f"The best control, {best} ({pct(mean[best])}), is above BAM "
            f"({pct(mean[bam_key])}), within the seed-to-seed spread"
        )
    else:
        standing = (
            f"BAM ({pct(mean[bam_key])}) is above the best control, {best} "
            f"({pct(mean[best])}), but within the seed-to-seed spread"
        )
    verdict = (
        f"{ranking} {standing}: no claim that BAM localises the digit better than the controls."
    )
    if mean[best] >= SATURATED:
        verdict += (
            f" The task is saturated: {best}, which owes nothing to BAM, already finds the digit "
            f"in {pct(mean[best])} of the images, so this task cannot show BAM localising better."
        )
    return verdict


def _timing_section(timing: dict, bam: str) -> list[str]:
    rows = []
    for name, t in timing["models"].items():
        if t is None:
            rows.append([name, "n/a", "n/a", "0", "n/a"])
            continue
        per_turn = ", ".join(f"{1000 * v:.0f}" for v in t["per_turn_median_s"])
        rows.append(
            [
                name,
                f"{1000 * t['median_s']:.1f}",
                f"{1000 * t['p25_s']:.1f}-{1000 * t['p75_s']:.1f}",
                str(t["steps_timed"]),
                per_turn,
            ]
        )
    lines = [
        "## Training speed",
        "",
        "Wall time of one training step (forward, backward, optimizer step), measured during the "
        "training runs above. The two models were trained in alternating turns ("
        + ", ".join(timing["order"])
        + "), so a machine that gets busier or quieter affects both alike. The first "
        "steps of each run are not timed.",
        "",
        table(
            ["model", "median ms/step", "middle half (ms)", "steps timed", "per-seed medians (ms)"],
            rows,
        ),
    ]
    ratio = timing["ratios"].get(bam)
    if ratio:
        per_seed = ratio["per_seed"]
        slower = all(r > 1 for r in per_seed)
        faster = all(r < 1 for r in per_seed)
        verdict = (
            "BAM's steps were slower in every seed."
            if slower
            else "BAM's steps were faster in every seed."
            if faster
            else "The direction changed between seeds: no claim about which trains faster."
        )
        lines += [
            "",
            f"Ratio {ratio['direction']}: {ratio['median_ratio']:.2f} (median step times); per "
            f"seed {', '.join(f'{r:.2f}' for r in per_seed)}. {verdict}",
        ]
    return lines


def _cost_section(report: dict) -> list[str]:
    """BAM's multiply-adds, its measured time and its floor's, side by side and in words."""
    from ..compare.cost import FLOOR, sentence

    cost = report["cost"]
    variants = report["variants"]
    base, bam = list(variants)
    macs = {name: variants[name]["macs"] for name in (base, bam)}
    nets = cost["networks"]
    ratios = cost["ratios"]

    def ratio(kind: str, name: str) -> str:
        return "1 (reference)" if name == base else f"{ratios[kind][name]:.2f}x"

    rows = []
    for name, what in ((base, base), (bam, bam), (FLOOR, f"{bam}'s floor")):
        rows.append(
            [
                what,
                f"{macs[name] / 1e6:.2f}" if name in macs else "-",
                f"{1000 * nets[name]['median_train_step_s']:.1f}",
                ratio("train_step", name),
                f"{1000 * nets[name]['median_inference_s']:.1f}",
                ratio("inference", name),
            ]
        )
    lines = [
        "",
        "## What BAM costs",
        "",
        f"The floor is the BAM network with each BAM replaced by what any implementation of it "
        f"must compute: its convolutions and one gate pass (`torch_bam.floor.bam_floor`). The "
        f"three networks were timed after training, in {cost['turns']} turns of one training "
        f"step and one inference each, in rotating order, on one batch of {cost['batch']} "
        f"training images; a ratio is the median over turns of that turn's ratio.",
        "",
        table(
            [
                "network",
                "MMACs per image",
                "ms per training step",
                "ratio",
                "ms per inference",
                "ratio",
            ],
            rows,
        ),
        "",
        sentence(cost, base, bam, macs[bam] / macs[base]),
    ]
    ratio_in_training = report["timing"]["ratios"].get(bam)
    if ratio_in_training:
        lines[-1] += (
            f" (Over all the training runs' steps, timed above while each model trained, the "
            f"same ratio was {ratio_in_training['median_ratio']:.2f}x.)"
        )
    return lines


def epoch_choice_sentence(models: dict, epochs: int) -> str:
    """What the choice of epoch did: if every run's lowest validation error came at its last
    epoch, the networks were still improving and the choice selected nothing; say so."""
    chosen = [e for m in models.values() for e in m["best_epoch"]]
    earlier = sum(e < epochs for e in chosen)
    if epochs == 1:
        return "With one epoch per run there is no epoch to choose: each run keeps its only one."
    if earlier == 0:
        return (
            f"Every run's lowest validation error came at its last epoch ({epochs}): the "
            f"networks were still improving, so choosing the epoch selected nothing, and the "
            f"test errors are those of the last epoch. Train longer (--epochs) for the choice "
            f"to matter."
        )
    return (
        f"In {earlier} of {len(chosen)} runs the lowest validation error came before the last "
        f"epoch ({epochs}): those runs keep the weights of that earlier epoch."
    )


def markdown(report: dict) -> str:
    """The text of ``report.md``."""
    cfg, sp, models = report["config"], report["splits"], report["variants"]
    names = list(models)
    claims = report["claims"]
    seeds = report["seeds"]
    lines = [
        "# torch-bam demo",
        "",
        f"Dataset {cfg['dataset']}: {sp['train']} training, {sp['val']} validation and "
        f"{sp['test']} test images of {sp['image_size']}x{sp['image_size']} pixels. "
        f"{cfg['epochs']} epoch(s) per training run, batch {cfg['batch_size']}, seeds "
        f"{', '.join(map(str, seeds))}: each seed is a new initialisation and batch order on "
        f"the same data. Machine: {report['machine']}. Every number below was measured in this "
        f"run, by the engine of `torch-bam compare` (this is its run with `--variants none,bam`, "
        f"under the networks' names).",
        "",
        "Where each number comes from: the training loss from the training split; the learning "
        "curves, the validation error and the choice of epoch (each run keeps the weights of "
        "its epoch with the lowest validation error) from the validation split; every other "
        "error and every hit rate from the test split, which the demo reads once, after all "
        "training. A difference is called real only if the difference of the means is larger "
        "than the seed-to-seed spread (the larger of the two standard deviations over seeds).",
        "",
        "## Classification",
        "",
    ]
    rows = [
        ["parameters"] + [f"{models[n]['parameters']:,}" for n in names],
        ["GFLOPs (MACs, 1 image)"] + [f"{models[n]['macs'] / 1e9:.4f}" for n in names],
        ["validation top-1 error, chosen epoch (validation)"]
        + [spread_cell(models[n]["val_top1_error_best"]) for n in names],
        ["chosen epoch per seed"] + [", ".join(map(str, models[n]["best_epoch"])) for n in names],
        ["test top-1 error, mean ± std (min-max) (test)"]
        + [spread_cell(models[n]["test_top1_error"]) for n in names],
        ["test top-1 error per seed (test)"]
        + [per_seed_cell(models[n]["test_top1_error"]) for n in names],
    ]
    lines += [table(["metric"] + names, rows), "", error_sentence(report), ""]
    lines += [epoch_choice_sentence(models, cfg["epochs"]), ""]
    pointing = report.get("pointing")
    if pointing:
        bam = names[1]
        lines += [
            "## Pointing game",
            "",
            f"On the {sp['test']} test images: how often a map's peak (upsampled to the image) "
            f"falls inside the digit's box. BAM's map is the spatial attention M_s of its "
            f"deepest BAM with a map larger than 1x1, where {names[0]}'s deepest bottleneck is "
            f"(`{report['pointing_layer']}`); the baseline's maps are read there too. The "
            f"controls: chance (a uniformly random peak), the centre prior (always the centre "
            f"pixel), image intensity (the brightest box-sized patch), the trained baseline's "
            f"own feature norm and Grad-CAM (for its predicted class), and the same BAM network "
            f"before training.",
            "",
            hit_rate_table(pointing, "hit rate, mean ± std over seeds (min-max)"),
            "",
            localisation_verdict(report),
            "",
            "BAM against each control, best control first:",
            "",
        ]
        lines += [f"- {s}" for s in claims["localisation"][bam]["against_each_control"]]
        lines.append("")
    else:
        lines += [
            "## Pointing game",
            "",
            "Not measured: this dataset has no object boxes.",
            "",
        ]
    lines += _timing_section(report["timing"], names[1])
    lines += _cost_section(report)
    lines += ["", *pictures(report)]
    lines += [
        "Checkpoints (weights of each run's chosen epoch): "
        + ", ".join(f"`{c}`" for c in report["checkpoints"])
        + ".",
        "",
    ]
    return "\n".join(lines)
