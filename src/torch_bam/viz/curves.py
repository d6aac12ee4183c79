"""Learning curves of several runs in one PNG."""

from __future__ import annotations

import os


def plot_learning_curves(histories: dict[str, dict[str, list[float]]], path: str) -> str:
    """One panel per metric (e.g. ``train_loss``, ``val_error``), one line per run, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({m for h in histories.values() for m in h})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), dpi=100)
    axes = [axes] if len(metrics) == 1 else list(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        for run, hist in histories.items():
            values = hist.get(metric, [])
            ax.plot(range(1, len(values) + 1), values, marker="o", label=run)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
