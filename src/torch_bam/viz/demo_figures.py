"""The demo's attention figure: BAM's spatial map beside the controls', on the same images.

One row per image. The first panel shows the image with the digit's true box; each next panel
shows one map (upsampled to the image, with its own colour bar), the same box, and a cross at
the map's peak: the pointing game scores a hit when the cross lies in the box. The last panel
shows the channels BAM's channel gate weights most.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .._io import atomic_write

PANEL_INCHES = 2.6
DPI = 100

__all__ = ["figure_size_px", "plot_pointing_maps"]


def figure_size_px(num_images: int, num_maps: int, channels: bool) -> tuple[int, int]:
    """``(width, height)`` in pixels of the PNG :func:`plot_pointing_maps` writes."""
    cols = 1 + num_maps + int(channels)
    return round(cols * PANEL_INCHES * DPI), round(num_images * PANEL_INCHES * DPI)


def _box(ax, box, color="white"):
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    # Pixel centres sit on integers, so a box of pixels x0..x1-1 spans x0-0.5 to x1-0.5.
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.5, ec=color))


def plot_pointing_maps(
    images: Tensor,
    boxes: Tensor,
    labels: Tensor,
    maps: dict[str, Tensor],
    predictions: dict[str, Tensor],
    path: str,
    channel_gate: Tensor | None = None,
    top_k: int = 6,
) -> str:
    """Draw the figure into ``path`` (written whole or not at all); return ``path``.

    Args:
        images: ``[N, C, H, W]`` images as the networks saw them.
        boxes: ``[N, 4]`` true boxes ``(x0, y0, x1, y1)``, pixels, ``x1``/``y1`` exclusive.
        labels: ``[N]`` true classes.
        maps: panel title -> ``[N, 1, h, w]`` map (any scale; each panel gets its colour bar).
        predictions: network name -> ``[N]`` predicted classes, printed beside the truth.
        channel_gate: ``[N, C]`` channel-gate values ``sigmoid(M_c)`` for the last panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, (height, width) = images.shape[0], images.shape[-2:]
    shown = images.detach().float().mean(dim=1)
    cols = 1 + len(maps) + int(channel_gate is not None)
    fig, axes = plt.subplots(
        n, cols, figsize=(cols * PANEL_INCHES, n * PANEL_INCHES), dpi=DPI, squeeze=False
    )
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(shown[i].numpy(), cmap="gray")
        _box(ax, boxes[i].tolist(), color="lime")
        preds = ", ".join(f"{k}: {int(v[i])}" for k, v in predictions.items())
        ax.set_title(f"true {int(labels[i])}", fontsize=9)
        ax.set_xlabel(f"predicted  {preds}", fontsize=7)
        for j, (title, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            up = F.interpolate(
                m[i : i + 1].float(), size=(height, width), mode="bilinear", align_corners=False
            )[0, 0]
            peak = int(up.flatten().argmax())
            py, px = divmod(peak, width)
            im = ax.imshow(up.numpy(), cmap="viridis")
            cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            cbar.ax.tick_params(labelsize=6)
            _box(ax, boxes[i].tolist())
            x0, y0, x1, y1 = boxes[i].tolist()
            hit = x0 <= px < x1 and y0 <= py < y1
            ax.plot(px, py, marker="x", color="red", markersize=9, mew=2)
            ax.set_title(f"{title}\npeak {'in' if hit else 'outside'} box", fontsize=8)
        if channel_gate is not None:
            ax = axes[i, -1]
            k = min(top_k, channel_gate.shape[1])
            values, index = channel_gate[i].float().topk(k)
            ax.bar(range(k), values.numpy())
            ax.set_xticks(range(k), [f"ch {c}" for c in index.tolist()], fontsize=7, rotation=45)
            ax.set_ylim(0, 1)
            ax.set_ylabel("channel gate sigmoid(M_c)", fontsize=7)
            ax.set_title(f"BAM: top-{k} channels", fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
        for ax in axes[i, : 1 + len(maps)]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    plt.close(fig)
    return path
