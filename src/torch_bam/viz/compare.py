"""The comparison's picture: test error against measured cost, one point per variant."""

from __future__ import annotations

from .style import DPI, TEXT_PT, TITLE_PT, save_png

__all__ = ["draw_error_vs_cost", "plot_error_vs_cost"]


def draw_error_vs_cost(report: dict):
    """The figure of :func:`plot_error_vs_cost`, not saved: a ``matplotlib`` Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..compare.claims import summarize

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=DPI)
    for name, r in report["variants"].items():
        s = summarize(r["test_top1_error"])
        x, y = r["train_step_ratio"], 100 * s["mean"]
        yerr = 100 * s["std"] if s["std"] is not None else None
        ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=5, markersize=6)
        ax.annotate(name, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=TEXT_PT)
    ref = report["reference"]
    ax.axvline(1.0, color="0.7", linewidth=0.8)
    ax.set_xlabel(f"training-step time / {ref}'s (measured)", fontsize=TEXT_PT)
    ax.set_ylabel("test top-1 error (%)", fontsize=TEXT_PT)
    n = len(report["seeds"])
    ax.set_title(
        f"{report['config']['backbone']} on {report['config']['dataset']}: "
        f"mean ± std over {n} seed{'s' if n > 1 else ''}",
        fontsize=TITLE_PT,
    )
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=TEXT_PT)
    fig.tight_layout()
    return fig


def plot_error_vs_cost(report: dict, path: str) -> str:
    """Write the PNG whole or not at all; returns ``path``."""
    fig = draw_error_vs_cost(report)
    return save_png(fig, path)
