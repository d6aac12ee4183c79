"""What a comparison may claim: a difference counts only if it exceeds the seed-to-seed spread.

Shared by ``torch-bam demo`` and ``torch-bam compare``, so their claims cannot drift apart.

Every measured quantity is a list with one value per seed (a control that does not depend on the
seed, such as the centre prior, repeats its value, so its spread is 0). Two quantities differ,
in the report's words, when the difference of their means is larger than the larger of their
two seed-to-seed standard deviations. With one seed the spread is unknown, and nothing is
claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Comparison", "claims_of", "compare", "describe", "localisation_claim", "summarize"]


def summarize(values: list[float]) -> dict[str, float | int | None]:
    """``mean``, ``std`` (sample standard deviation; ``None`` for one value), ``min``, ``max``."""
    if not values:
        raise ValueError("summarize: need at least one value.")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: ``difference`` = mean(a) - mean(b); ``spread`` = the larger std."""

    difference: float
    spread: float | None
    exceeds: bool  # |difference| > spread (never true when the spread is unknown)
    mean_a: float = 0.0
    mean_b: float = 0.0

    @property
    def points(self) -> float:
        """The difference in percentage points as the report prints it: of the two means each
        rounded to 0.1%, so the text agrees with the tables (16.3% - 14.7% is 1.6 points)."""
        return round(round(100 * self.mean_a, 1) - round(100 * self.mean_b, 1), 1)


def compare(a: list[float], b: list[float]) -> Comparison:
    """Compare two per-seed lists by the rule above."""
    sa, sb = summarize(a), summarize(b)
    difference = sa["mean"] - sb["mean"]
    if sa["std"] is None or sb["std"] is None:
        return Comparison(difference, None, False, sa["mean"], sb["mean"])
    spread = max(sa["std"], sb["std"])
    return Comparison(difference, spread, abs(difference) > spread, sa["mean"], sb["mean"])


def localisation_claim(
    bam: list[float], controls: dict[str, list[float]], subject: str = "BAM"
) -> tuple[bool, str, list[str]]:
    """Whether a map's pointing hit rate (``bam``'s) beats the best control by more than the
    spread.

    Returns ``(claimed, best_control_name, sentences)``: one sentence per control, saying
    whether the map's (``subject``'s) difference to it exceeds the spread, best control first.
    """
    if not controls:
        raise ValueError("localisation_claim: need at least one control.")
    order = sorted(controls, key=lambda k: summarize(controls[k])["mean"], reverse=True)
    best = order[0]
    sentences = []
    for name in order:
        c = compare(bam, controls[name])
        sentences.append(f"{name}: {describe(c, subject, 'higher', 'lower')}")
    best_cmp = compare(bam, controls[best])
    claimed = best_cmp.exceeds and best_cmp.difference > 0
    return claimed, best, sentences


def describe(c: Comparison, subject: str, up: str, down: str, than: str = "") -> str:
    """``"BAM is 12.3 points higher, more than the seed-to-seed spread (2.1 points)"``."""
    direction = up if c.difference > 0 else down
    size = f"{abs(c.points):.1f} points {direction}"
    if than:
        size += f" than {than}"
    if c.spread is None:
        return f"{subject} is {size}; with one seed the spread is unknown"
    verdict = "more than" if c.exceeds else "within"
    return f"{subject} is {size}, {verdict} the seed-to-seed spread ({c.spread * 100:.1f} points)"


def claims_of(report: dict) -> dict:
    """The claims of a run's report: the error of each variant against the reference (and of
    each other variant against ``bam``, where both are in the run); for each spatial map in
    ``report["pointing"]``, whether it beats every control (the maps that owe nothing to
    attention, and the same network before training) by more than the seed-to-seed spread."""
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
        controls = {
            k: v
            for k, v in pointing.items()
            if k not in variants and not k.startswith("untrained ")
        }
        local = {}
        for v in (v for v in variants if v in pointing):
            mine = dict(controls)
            if f"untrained {v}" in pointing:
                mine[f"untrained {v}"] = pointing[f"untrained {v}"]
            claimed, best, sentences = localisation_claim(pointing[v], mine, subject=v)
            c = compare(pointing[v], mine[best])
            local[v] = {
                "claimed": claimed,
                "best_control": best,
                "sentence": (
                    f"{v}'s spatial map beats every control, the best ({best}) by more than "
                    f"the seed-to-seed spread."
                    if claimed
                    else f"{v}'s spatial map: {describe(c, v, 'higher', 'lower', best)}"
                    f" (the best control): no claim that it localises the digit better."
                ),
                "against_each_control": sentences,
            }
        claims["localisation"] = local
    return claims
