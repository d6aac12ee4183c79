"""How long each variant's training steps took while it trained: Lightning's runs, timed.

The engine trains the variants of a seed in turns whose order rotates from seed to seed, so a
machine that gets busier or quieter affects all of them alike; each run's first steps pay for
allocation and are not counted. The ratio of a variant to the reference is taken per seed (of
the two runs' median steps) and over all steps.
"""

from __future__ import annotations

from statistics import median

from .claims import summarize

__all__ = ["WARMUP_STEPS", "step_times"]

WARMUP_STEPS = 5  # per training run: the first steps pay for allocation and are not timed


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def _timed(steps: list[float]) -> list[float]:
    # Skip the warm-up steps, but keep at least half of a short run's steps.
    return steps[min(WARMUP_STEPS, len(steps) // 2) :]


def step_times(records: dict[int, dict], order: list[tuple[int, str]], reference: str) -> dict:
    """Median per-step time of each variant over all its timed steps, its middle half and its
    per-seed medians; and, for every other variant, its ratio to ``reference``.

    ``records[seed][variant]``: the run's :class:`.callbacks.Record`; ``order``: the runs as
    ``(seed, variant)`` in the order they trained.
    """
    names = list(next(iter(records.values())))
    out: dict = {"order": [f"{v} (seed {s})" for s, v in order], "models": {}, "ratios": {}}
    for v in names:
        turns = [_timed(records[s][v].step_seconds) for s in records]
        steps = [t for turn in turns for t in turn]
        out["models"][v] = (
            {
                "steps_timed": len(steps),
                "median_s": median(steps),
                "p25_s": _quantile(steps, 0.25),
                "p75_s": _quantile(steps, 0.75),
                "per_turn_median_s": [median(turn) for turn in turns],
            }
            if steps
            else None
        )
    ref = out["models"][reference]
    for v in names:
        mine = out["models"][v]
        if v == reference or ref is None or mine is None:
            continue
        pairs = zip(ref["per_turn_median_s"], mine["per_turn_median_s"], strict=True)
        ratios = [b / a for a, b in pairs]
        out["ratios"][v] = {
            "direction": f"{v} / {reference} (above 1: {v}'s steps are slower)",
            "median_ratio": mine["median_s"] / ref["median_s"],
            "per_seed": ratios,
            "summary": summarize(ratios),
        }
    return out
