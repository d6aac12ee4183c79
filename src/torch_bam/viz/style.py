"""Font sizes of the saved pictures, in points: readable when a PNG is shown at its saved size.

Each figure is saved at :data:`DPI`, so a size of ``p`` points is ``p * DPI / 72`` pixels high:
9 points at 100 dpi is 12.5 pixels, the size of a browser's small text.
"""

from __future__ import annotations

DPI = 100
TEXT_PT = 9  # the smallest text: tick labels, legends, notes
TITLE_PT = 10


def pixels(points: float, dpi: float = DPI) -> float:
    """The height in pixels of text of ``points`` points saved at ``dpi``."""
    return points * dpi / 72


def save_png(fig, path: str) -> str:
    """Write ``fig`` to ``path`` as a PNG, whole or not at all, and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    from .._io import atomic_write

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    finally:
        plt.close(fig)
    return path
