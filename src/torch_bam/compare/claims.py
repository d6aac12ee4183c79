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

__all__ = ["Comparison", "compare", "describe", "localisation_claim", "summarize"]


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
    bam: list[float], controls: dict[str, list[float]]
) -> tuple[bool, str, list[str]]:
    """Whether BAM's pointing hit rate beats the best control by more than the spread.

    Returns ``(claimed, best_control_name, sentences)``: one sentence per control, saying
    whether BAM's difference to it exceeds the spread, best control first.
    """
    if not controls:
        raise ValueError("localisation_claim: need at least one control.")
    order = sorted(controls, key=lambda k: summarize(controls[k])["mean"], reverse=True)
    best = order[0]
    sentences = []
    for name in order:
        c = compare(bam, controls[name])
        sentences.append(f"{name}: {describe(c, 'BAM', 'higher', 'lower')}")
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
