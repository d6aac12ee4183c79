"""Learning curves of several runs in one PNG, with a band across seeds."""

from __future__ import annotations

from .._io import atomic_write

# Axis labels for the metrics torch-bam records; any other metric is labelled by its name.
LABELS = {
    "train_loss": "training loss (epoch mean)",
    "val_top1_error": "top-1 error, validation split",
    "val_error": "validation error",
}


def plot_learning_curves(
    histories: dict[str, dict[str, list[float]] | list[dict[str, list[float]]]], path: str
) -> str:
    """One panel per metric, one line per run, against the epoch.

    ``histories[run]`` is one history ``{metric: [value per epoch]}`` or a list of them (one per
    seed): the line is then the mean over seeds and the shaded band runs from the lowest to the
    highest seed. The PNG is written whole or not at all.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = {k: v if isinstance(v, list) else [v] for k, v in histories.items()}
    metrics = sorted({m for seeds in runs.values() for h in seeds for m in h})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), dpi=100)
    axes = [axes] if len(metrics) == 1 else list(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        for run, seeds in runs.items():
            curves = [h[metric] for h in seeds if h.get(metric)]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            columns = [[c[e] for c in curves] for e in range(length)]
            epochs = range(1, length + 1)
            mean = [sum(col) / len(col) for col in columns]
            label = run if len(curves) == 1 else f"{run} (mean of {len(curves)} seeds, min-max)"
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
            if len(curves) > 1:
                low, high = [min(col) for col in columns], [max(col) for col in columns]
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(LABELS.get(metric, metric), fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path
