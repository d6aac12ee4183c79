"""The comparison's report in Markdown: tables of the measured numbers, the claims in words.

Every number comes from the report dict :mod:`torch_bam.compare.experiment` builds; every
sentence that says one thing beats another follows :mod:`torch_bam.compare.claims`. The demo's
report uses the same cells and tables.
"""

from __future__ import annotations

from .claims import compare, describe, summarize

__all__ = ["markdown", "pct", "spread_cell", "table"]


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


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _signed(n: int, unit: float = 1.0, fmt: str = "{:,.0f}") -> str:
    return ("+" if n > 0 else "") + fmt.format(n / unit) if n else "0"


def claims_of(report: dict) -> dict:
    """Error of each variant against the reference (and of each peer against BAM); for each
    spatial map, whether it beats every control by more than the seed-to-seed spread."""
    variants, ref = report["variants"], report["reference"]
    error = {}
    pairs = [(v, ref) for v in variants if v != ref]
    if "bam" in variants and ref != "bam":
        pairs += [(v, "bam") for v in variants if v not in (ref, "bam")]
    for a, b in pairs:
        c = compare(variants[a]["test_top1_error"], variants[b]["test_top1_error"])
        error[f"{a} vs {b}"] = {
            "difference": c.difference,
            "spread": c.spread,
            "exceeds": c.exceeds,
            "sentence": describe(c, a, "higher", "lower", b),
        }
    claims: dict = {"error": error}
    pointing = report.get("pointing")
    if pointing:
        maps = [v for v in variants if v in pointing]
        controls = {k: v for k, v in pointing.items() if k not in variants}
        local = {}
        for v in maps:
            mine = {k: c for k, c in controls.items() if not k.startswith("untrained ")}
            mine[f"untrained {v}"] = controls[f"untrained {v}"]
            order = sorted(mine, key=lambda k: summarize(mine[k])["mean"], reverse=True)
            best = compare(pointing[v], mine[order[0]])
            claimed = best.exceeds and best.difference > 0
            local[v] = {
                "claimed": claimed,
                "best_control": order[0],
                "sentence": (
                    f"{v}'s spatial map beats every control, the best ({order[0]}) by more than "
                    f"the seed-to-seed spread."
                    if claimed
                    else f"{v}'s spatial map: {describe(best, v, 'higher', 'lower', order[0])}"
                    f" (the best control): no claim that it localises the digit better."
                ),
            }
        claims["localisation"] = local
    return claims


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


def markdown(report: dict) -> tuple[str, dict]:
    """``(report.md text, claims dict)``."""
    cfg, sp, variants = report["config"], report["splits"], report["variants"]
    ref, seeds = report["reference"], report["seeds"]
    claims = claims_of(report)
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
                ", ".join(pct(e) for e in r["test_top1_error"]),
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
            table(
                ["map", "hit rate, mean ± std (min-max)", "per seed"],
                [[k, spread_cell(v), ", ".join(pct(x) for x in v)] for k, v in pointing.items()],
            ),
            "",
        ]
        lines += [f"- {c['sentence']}" for c in claims["localisation"].values()]
        lines.append("")
    else:
        lines += ["## Pointing game", "", "Not measured: this dataset has no object boxes.", ""]
    lines += [
        "## Picture",
        "",
        "![error against cost](error_vs_cost.png)",
        "",
        f"Test error (mean, bar: ± one std over seeds) against the measured training-step time "
        f"relative to {ref}, one point per variant.",
        "",
    ]
    return "\n".join(lines), claims
