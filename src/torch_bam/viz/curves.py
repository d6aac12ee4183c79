"""Learning curves of several runs in one PNG, with a band across seeds."""

from __future__ import annotations

from .style import DPI, TEXT_PT, TITLE_PT, save_png

# The metrics torch-bam records, by their logged names: panel title in words and the factor
# to the unit shown (errors are fractions, shown in percent). Any other metric keeps its name.
METRICS = {
    "train/loss_epoch": ("Training loss (epoch mean)", 1.0),
    "val/top1_err": ("Validation top-1 error (%)", 100.0),
}
MAX_EPOCH_TICKS = 12  # more epochs: let matplotlib choose integer ticks

__all__ = ["METRICS", "draw_learning_curves", "plot_learning_curves"]


def _runs(histories):
    return {k: v if isinstance(v, list) else [v] for k, v in histories.items()}


def draw_learning_curves(
    histories: dict[str, dict[str, list[float]] | list[dict[str, list[float]]]],
):
    """The figure of :func:`plot_learning_curves`, not saved: a ``matplotlib`` Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = _runs(histories)
    found = {m for seeds in runs.values() for h in seeds for m in h}
    metrics = [m for m in METRICS if m in found] + sorted(found - set(METRICS))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), dpi=DPI)
    axes = [axes] if len(metrics) == 1 else list(axes)
    most_seeds, longest = 1, 1
    for ax, metric in zip(axes, metrics, strict=True):
        title, factor = METRICS.get(metric, (metric, 1.0))
        for run, seeds in runs.items():
            curves = [[factor * v for v in h[metric]] for h in seeds if h.get(metric)]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            longest = max(longest, length)
            most_seeds = max(most_seeds, len(curves))
            columns = [[c[e] for c in curves] for e in range(length)]
            epochs = range(1, length + 1)
            mean = [sum(col) / len(col) for col in columns]
            (line,) = ax.plot(epochs, mean, marker="o", markersize=4, label=run)
            if len(curves) > 1:
                low, high = [min(col) for col in columns], [max(col) for col in columns]
                if length == 1:  # a band over one epoch has no width: an error bar instead
                    below, above = [mean[0] - low[0]], [high[0] - mean[0]]
                    ax.errorbar(
                        epochs, mean, yerr=[below, above], color=line.get_color(), capsize=6
                    )
                else:
                    ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(title, fontsize=TITLE_PT)
        ax.set_xlabel("Epoch", fontsize=TEXT_PT)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=TEXT_PT)
        ax.tick_params(labelsize=TEXT_PT)
    for ax in axes:
        # Whole epochs only, with room around the first and last (one epoch is one tick).
        ax.set_xlim(0.5, longest + 0.5)
        if longest <= MAX_EPOCH_TICKS:
            ax.set_xticks(range(1, longest + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if most_seeds > 1:
        fig.text(
            0.5,
            0.01,
            f"Line: mean over {most_seeds} seeds; band (one epoch: bar): lowest to highest seed.",
            ha="center",
            va="bottom",
            fontsize=TEXT_PT,
        )
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    return fig


def plot_learning_curves(
    histories: dict[str, dict[str, list[float]] | list[dict[str, list[float]]]], path: str
) -> str:
    """One panel per metric, one line per run, against the epoch.

    ``histories[run]`` is one history ``{metric: [value per epoch]}`` or a list of them (one per
    seed): the line is then the mean over seeds and the shaded band runs from the lowest to the
    highest seed. Metrics named in :data:`METRICS` get a title in words and their unit. The PNG
    is written whole or not at all.
    """
    fig = draw_learning_curves(histories)
    return save_png(fig, path)
