"""The hierarchical attention figure: for each BAM stage, where the network looks.

Per image (a row) and per BAM stage (a group of three columns): the spatial attention
``sigmoid(M_s)`` upsampled over the image, the combined 3-D gate averaged over channels, and a
bar chart of the channels the channel gate ``sigmoid(M_c)`` weights most.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import record_attention

PANEL_INCHES = 2.2
DPI = 100


def figure_size_px(num_images: int, num_bams: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the grid that :func:`plot_attention_grid` writes."""
    cols = 1 + 3 * num_bams
    return round(cols * PANEL_INCHES * DPI), round(num_images * PANEL_INCHES * DPI)


def plot_attention_grid(
    model: nn.Module, images: Tensor, path: str, top_k: int = 8, display: Tensor | None = None
) -> str:
    """Run ``model`` on ``images`` ``[N, C, H, W]`` and draw its BAM attention into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    with record_attention(model) as maps, torch.no_grad():
        model(images)
    names = list(maps)
    n, (height, width) = images.shape[0], images.shape[-2:]
    shown = (display if display is not None else images).detach().float()
    shown = (shown - shown.amin(dim=(1, 2, 3), keepdim=True)) / (
        shown.amax(dim=(1, 2, 3), keepdim=True) - shown.amin(dim=(1, 2, 3), keepdim=True) + 1e-8
    )

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)

    cols = 1 + 3 * len(names)
    fig, axes = plt.subplots(
        n, cols, figsize=(cols * PANEL_INCHES, n * PANEL_INCHES), dpi=DPI, squeeze=False
    )
    for i in range(n):
        img = shown[i].permute(1, 2, 0).numpy()
        img = img[..., 0] if img.shape[-1] == 1 else img[..., :3]
        cmap = "gray" if img.ndim == 2 else None
        axes[i, 0].imshow(img, cmap=cmap)
        axes[i, 0].set_title("image", fontsize=8)
        for j, name in enumerate(names):
            att = maps[name]
            spatial = up(torch.sigmoid(att.spatial_logits[i : i + 1].float()))[0, 0]
            gate = up(att.gate[i : i + 1].float().mean(dim=1, keepdim=True))[0, 0]
            channel = torch.sigmoid(att.channel_logits[i].float())
            k = min(top_k, channel.numel())
            values, index = channel.topk(k)
            ax_s, ax_g, ax_c = axes[i, 1 + 3 * j], axes[i, 2 + 3 * j], axes[i, 3 + 3 * j]
            ax_s.imshow(img, cmap=cmap)
            ax_s.imshow(spatial.numpy(), cmap="jet", alpha=0.5)
            ax_s.set_title(f"{name}: spatial", fontsize=8)
            ax_g.imshow(gate.numpy(), cmap="viridis")
            ax_g.set_title(f"{name}: 3-D gate, mean", fontsize=8)
            ax_c.bar(range(k), values.numpy())
            ax_c.set_xticks(range(k), [str(c) for c in index.tolist()], fontsize=6, rotation=90)
            ax_c.set_ylim(0, 1)
            ax_c.set_title(f"{name}: top-{k} channels", fontsize=8)
        for ax in axes[i]:
            if ax.images:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def load_images(paths: list[str], in_chans: int, size: int, mean, std) -> tuple[Tensor, Tensor]:
    """Read image files, resize to ``size``; return (normalized input, [0, 1] for display)."""
    from PIL import Image

    mode = "L" if in_chans == 1 else "RGB"
    raw = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert(mode).resize((size, size), Image.BILINEAR)
            t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            raw.append(t.view(size, size, in_chans).permute(2, 0, 1).float() / 255)
    display = torch.stack(raw)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (display - m) / s, display


def visualize(checkpoint: str, images: list[str], out: str, top_k: int = 8) -> list[str]:
    """``torch-bam visualize``: one attention grid PNG for the given images, in ``out``."""
    from .checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    in_chans = int(meta.get("in_chans", 3))
    size = int(meta.get("image_size", 224))
    mean = meta.get("mean", [0.5] * in_chans)
    std = meta.get("std", [0.5] * in_chans)
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"visualize: no such image file(s): {', '.join(missing)}.")
    x, display = load_images(images, in_chans, size, mean, std)
    path = os.path.join(out, "attention.png")
    return [plot_attention_grid(model, x, path, top_k=top_k, display=display)]
