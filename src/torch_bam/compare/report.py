"""The comparison's report in Markdown: tables of the measured numbers, the claims in words.

Every number comes from the report dict the engine (:mod:`.engine`) builds; every sentence that
says one thing beats another is one of its claims (:func:`.claims.claims_of`). The demo's
report uses the same cells and tables.
"""

from __future__ import annotations

from .claims import summarize

__all__ = ["hit_rate_table", "markdown", "pct", "per_seed_cell", "pictures", "spread_cell", "table"]


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def spread_cell(values: list[float]) -> str:
    """``"12.3% ± 1.2 (10.9-13.5%)"``; one value: ``"12.3%"``."""
    s = summarize(values)
    if s["std"] is None:
        return pct(s["mean"])
    if s["min"] == s["max"]:
        return f"{pct(s['mean'])} ± 0.0"
    return f"{pct(s['mean'])} ± {100 * s['std']:.1f} ({100 * s['min']:.1f}-{100 * s['max']:.1f}%)"


def per_seed_cell(values: list[float]) -> str:
    """``"10.9%, 12.4%, 13.5%"``: each seed's value, in seed order."""
    return ", ".join(pct(v) for v in values)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def hit_rate_table(pointing: dict[str, list[float]], spread_header: str) -> str:
    """The pointing game's table: a row per map, its spread and its per-seed hit rates."""
    rows = [[k, spread_cell(v), per_seed_cell(v)] for k, v in pointing.items()]
    return table(["map", spread_header, "per seed"], rows)


def _signed(n: int, unit: float = 1.0, fmt: str = "{:,.0f}") -> str:
    return ("+" if n > 0 else "") + fmt.format(n / unit) if n else "0"


def _verdicts(claims: dict) -> list[str]:
    real = [k for k, c in claims["error"].items() if c["exceeds"]]
    lines = []
    for c in claims["error"].values():
        lines.append(f"- {c['sentence']}.")
    lines.append("")
    if real:
        lines.append(
            "Differences larger than the seed-to-seed spread: " + ", ".join(real) + ". "
            "Every other difference above is within the spread: the run does not tell those "
            "variants apart."
        )
    else:
        lines.append(
            "No difference in test error is larger than the seed-to-seed spread: this run does "
            "not tell any two variants apart. More seeds, more data or more epochs may."
        )
    return lines


def markdown(report: dict) -> str:
    """The text of ``report.md``."""
    cfg, sp, variants = report["config"], report["splits"], report["variants"]
    ref, seeds, claims = report["reference"], report["seeds"], report["claims"]
    base = variants[ref]
    lines = [
        "# torch-bam compare",
        "",
        f"Backbone {cfg['backbone']}, dataset {cfg['dataset']}: {sp['train']} training, "
        f"{sp['val']} validation and {sp['test']} test images of "
        f"{sp['image_size']}x{sp['image_size']} pixels. {cfg['epochs']} epoch(s) per run, batch "
        f"{cfg['batch_size']}, seeds {', '.join(map(str, seeds))} (each a new initialisation "
        f"and batch order on the same data). Machine: {report['machine']}. Every number below "
        f"was measured in this run.",
        "",
        "Each run keeps the weights of its epoch with the lowest validation error; the test "
        "split is read once, after all training. A difference is called real only if the "
        "difference of the means is larger than the seed-to-seed spread (the larger of the two "
        "standard deviations over seeds).",
        "",
        "## Error and cost",
        "",
        f"Placement: BAM at the bottlenecks; SE, ECA and CBAM in every block. Parameters and "
        f"multiply-adds (one image) are added to {ref}'s; time ratios to {ref}'s, measured after "
        f"training on {report['cost']['device']} in {report['cost']['turns']} interleaved turns "
        f"at batch {report['cost']['batch']} (median of per-turn ratios).",
        "",
    ]
    rows = []
    for v, r in variants.items():
        rows.append(
            [
                v,
                spread_cell(r["test_top1_error"]),
                per_seed_cell(r["test_top1_error"]),
                _signed(r["parameters"] - base["parameters"]),
                _signed(r["macs"] - base["macs"], 1e3, "{:,.1f}K"),
                f"{r['train_step_ratio']:.2f}x",
                f"{r['inference_ratio']:.2f}x",
            ]
        )
    lines += [
        table(
            [
                "variant",
                "test error, mean ± std (min-max)",
                "per seed",
                "params added",
                "MACs added",
                "train step",
                "inference",
            ],
            rows,
        ),
        "",
    ]
    lines += _verdicts(claims)
    lines.append("")
    pointing = report.get("pointing")
    if pointing:
        lines += [
            "## Pointing game",
            "",
            f"On the {sp['test']} test images: how often a map's peak falls inside the digit's "
            f"box. Each spatial map is read at the deepest bottleneck (`"
            f"{report['pointing_layer']}`, where BAM's last map is; CBAM's map of the same size). "
            f"Controls that owe nothing to attention: chance, the centre prior, image "
            f"intensity, {ref}'s own feature norm and Grad-CAM there, and each network before "
            f"training.",
            "",
            hit_rate_table(pointing, "hit rate, mean ± std (min-max)"),
            "",
        ]
        lines += [f"- {c['sentence']}" for c in claims["localisation"].values()]
        lines.append("")
    else:
        lines += ["## Pointing game", "", "Not measured: this dataset has no object boxes.", ""]
    lines += pictures(report)
    return "\n".join(lines)


def pictures(report: dict) -> list[str]:
    """The report's section on its pictures (:mod:`.pictures`), the same for both commands."""
    ref, seeds, files = report["reference"], report["seeds"], report["files"]
    lines = [
        "## Pictures",
        "",
        f"![error against cost]({files['error_vs_cost']})",
        "",
        f"Test error (mean, bar: ± one std over seeds) against the measured training-step time "
        f"relative to {ref}, one point per variant.",
        "",
        f"![learning curves]({files['learning_curves']})",
        "",
        "Training loss (training split) and top-1 error on the validation split, per epoch: "
        "the line is the mean over seeds, the band runs from the lowest to the highest seed.",
        "",
    ]
    if "attention" in files:
        lines += [
            f"![attention maps, seed {seeds[0]}]({files['attention']})",
            "",
            f"Maps of the seed-{seeds[0]} networks on the first test images (test split). Green "
            "and white: the true box; red cross: each map's peak. All maps share one colour "
            "scale, 0 to 1: each attention map's sigmoid as it is (its panel gives its range), "
            "the other maps stretched from their minimum to their maximum in each image, and a "
            "map that hardly varies says it is flat. Last panel, where a BAM has both gates: "
            "the channels its channel gate weights most, against the median of all its "
            "channels.",
            "",
        ]
    return lines
