"""Checks on matplotlib Figures that hold at any content: text readable at the saved size."""

import matplotlib

matplotlib.use("Agg")

MIN_TEXT_PX = 12  # text height in pixels at the figure's dpi: readable at the saved size


def small_texts(fig):
    """Every visible, non-empty text drawn smaller than MIN_TEXT_PX at the figure's dpi."""
    from matplotlib.text import Text

    fig.canvas.draw()  # creates the tick labels
    small = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and t.get_figure() is not None:
            px = t.get_fontsize() * fig.dpi / 72
            if px < MIN_TEXT_PX:
                small.append((t.get_text(), round(px, 1)))
    return small
