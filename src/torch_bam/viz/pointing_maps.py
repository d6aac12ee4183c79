"""The pointing-game figure of the demo and compare: each spatial attention map beside the
controls', on the same images.

One row per image. The first panel shows the image with the digit's true box; each next panel
shows one map (upsampled to the image), the same box, and a cross at the map's peak: the
pointing game scores a hit when the cross lies in the box. Every map is drawn on one fixed
scale, 0 to 1, with one colour bar for all: a sigmoid output (BAM's ``sigmoid(M_s)``) as it
is, any other map (feature norm, Grad-CAM, intensity: no fixed scale of their own) stretched
from its minimum (0) to its maximum (1) per image. A map whose values hardly vary (a range
below :data:`FLAT`, relative to its size for a stretched map) says so in its panel, so a
stretched flat map cannot pass for structure; a sigmoid map always shows its range. The last
panel shows the channels BAM's channel gate weights most, against the median of all channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .style import DPI, TEXT_PT, TITLE_PT, save_png

PANEL_INCHES = 2.6
CMAP = "viridis"
FLAT = 0.01  # a map whose values span less than this (a sigmoid: absolutely) is called flat
MEDIAN_LABEL = "median of all channels"

__all__ = ["draw_pointing_maps", "figure_size_px", "plot_pointing_maps"]


def figure_size_px(num_images: int, num_maps: int, channels: bool) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG :func:`plot_pointing_maps` writes."""
    cols = 1 + num_maps + int(channels)
    return round(cols * PANEL_INCHES * DPI), round((num_images + 0.5) * PANEL_INCHES * DPI)


def _box(ax, box, color="white"):
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    # Pixel centres sit on integers, so a box of pixels x0..x1-1 spans x0-0.5 to x1-0.5.
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.5, ec=color))


def _on_unit_scale(m: Tensor, probability: bool) -> tuple[Tensor, str | None]:
    """``m`` on 0-1, and the panel's note: a sigmoid map's range, a stretched map's only when
    it is flat (``None`` otherwise)."""
    low, high = float(m.min()), float(m.max())
    if probability:
        # Always say the range: a map of 0.45-0.46 looks uniform on 0-1, and is nearly so.
        flat = "flat: " if high - low < FLAT else "range "
        return m.clamp(0, 1), f"{flat}{low:.3f} to {high:.3f}"
    size = max(abs(low), abs(high))
    if high - low <= FLAT * size or high == low:
        return torch.zeros_like(m), f"flat: {low:.3g} to {high:.3g}"
    return (m - low) / (high - low), None


def _channels(ax, gate: Tensor, top_k: int, bam_name: str | None) -> None:
    """Top-k channel-gate values as bars, and the median of all channels as a dashed line."""
    c = gate.numel()
    k = min(top_k, c)
    values, index = gate.float().topk(k)
    median = float(gate.float().median())
    ax.bar(range(k), values.numpy(), color="tab:blue")
    ax.axhline(median, color="black", ls="--", lw=1.2, label=MEDIAN_LABEL)
    ax.set_xticks(range(k), [str(i) for i in index.tolist()], fontsize=TEXT_PT)
    ax.set_ylim(0, 1)
    ax.set_ylabel("channel gate sigmoid(M_c)", fontsize=TEXT_PT)
    ax.set_xlabel(f"channel; dashed: median of\nall {c} channels ({median:.2f})", fontsize=TEXT_PT)
    where = f"BAM {bam_name}" if bam_name else "BAM"
    ax.set_title(f"{where}:\ntop {k} of {c} channels", fontsize=TEXT_PT)
    ax.tick_params(axis="y", labelsize=TEXT_PT)


def draw_pointing_maps(
    images: Tensor,
    boxes: Tensor,
    labels: Tensor,
    maps: dict[str, Tensor],
    predictions: dict[str, Tensor],
    probabilities: tuple[str, ...] | list[str] = (),
    channel_gate: Tensor | None = None,
    bam_name: str | None = None,
    top_k: int = 6,
):
    """The figure of :func:`plot_pointing_maps`, not saved: a ``matplotlib`` Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    unknown = set(probabilities) - set(maps)
    if unknown:
        raise ValueError(f"draw_pointing_maps: probabilities names no map: {sorted(unknown)}.")
    n, (height, width) = images.shape[0], images.shape[-2:]
    shown = images.detach().float().mean(dim=1)
    cols = 1 + len(maps) + int(channel_gate is not None)
    fig, axes = plt.subplots(
        n,
        cols,
        figsize=(cols * PANEL_INCHES, (n + 0.5) * PANEL_INCHES),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
    )
    norm = Normalize(vmin=0.0, vmax=1.0)  # one scale for every map, and one colour bar
    mappable = None
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(shown[i].numpy(), cmap="gray")
        _box(ax, boxes[i].tolist(), color="lime")
        # One network a line, so that long names and many networks stay within the panel.
        preds = "\n".join(f"{k}: {int(v[i])}" for k, v in predictions.items())
        ax.set_title(f"true class {int(labels[i])}", fontsize=TITLE_PT)
        ax.set_xlabel(f"predicted\n{preds}", fontsize=TEXT_PT)
        for j, (title, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            up = F.interpolate(
                m[i : i + 1].detach().float(),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            peak = int(up.flatten().argmax())
            py, px = divmod(peak, width)
            probability = title in probabilities
            unit, note = _on_unit_scale(up, probability)
            mappable = ax.imshow(unit.numpy(), cmap=CMAP, norm=norm)
            _box(ax, boxes[i].tolist())
            x0, y0, x1, y1 = boxes[i].tolist()
            hit = x0 <= px < x1 and y0 <= py < y1
            ax.plot(px, py, marker="x", color="red", markersize=10, mew=2.5)
            name = title if probability else f"{title} (stretched)"
            ax.set_title(f"{name}\npeak {'in' if hit else 'outside'} box", fontsize=TEXT_PT)
            if note:
                ax.text(
                    0.5,
                    0.04,
                    note,
                    transform=ax.transAxes,
                    ha="center",
                    va="bottom",
                    fontsize=TEXT_PT,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"},
                )
        if channel_gate is not None:
            _channels(axes[i, -1], channel_gate[i], top_k, bam_name)
        for ax in axes[i, : 1 + len(maps)]:
            ax.set_xticks([])
            ax.set_yticks([])
    if mappable is not None:
        bar = fig.colorbar(
            mappable,
            ax=axes[:, 1 : 1 + len(maps)].ravel().tolist(),
            location="bottom",
            shrink=0.6,
            aspect=40,
        )
        bar.set_label(
            "map value, one scale for all: sigmoid(M_s) as it is; a map marked (stretched) "
            "runs from its minimum (0) to its maximum (1) in each image",
            fontsize=TEXT_PT,
        )
        bar.ax.tick_params(labelsize=TEXT_PT)
    # A margin below the colour bar's label, so that its underscores are not cut at the edge.
    fig.get_layout_engine().set(h_pad=0.08)
    return fig


def plot_pointing_maps(
    images: Tensor,
    boxes: Tensor,
    labels: Tensor,
    maps: dict[str, Tensor],
    predictions: dict[str, Tensor],
    path: str,
    probabilities: tuple[str, ...] | list[str] = (),
    channel_gate: Tensor | None = None,
    bam_name: str | None = None,
    top_k: int = 6,
) -> str:
    """Draw the figure into ``path`` (written whole or not at all); return ``path``.

    Args:
        images: ``[N, C, H, W]`` images as the networks saw them.
        boxes: ``[N, 4]`` true boxes ``(x0, y0, x1, y1)``, pixels, ``x1``/``y1`` exclusive.
        labels: ``[N]`` true classes.
        maps: panel title -> ``[N, 1, h, w]`` map.
        predictions: network name -> ``[N]`` predicted classes, printed beside the truth.
        probabilities: the titles in ``maps`` whose maps are sigmoid outputs, drawn as they
            are on 0-1; every other map is stretched to 0-1 per image (and its title says so).
        channel_gate: ``[N, C]`` channel-gate values ``sigmoid(M_c)`` for the last panel.
        bam_name: the module path of the BAM whose channel gate that is (its panel's title).
    """
    fig = draw_pointing_maps(
        images, boxes, labels, maps, predictions, probabilities, channel_gate, bam_name, top_k
    )
    return save_png(fig, path)
