"""The hierarchical attention figure: for each BAM stage, where the network looks.

Per image (a row) and per BAM stage (a group of three columns): the spatial attention
``sigmoid(M_s)`` upsampled over the image, the combined 3-D gate averaged over channels, and a
bar chart of the channels the channel gate ``sigmoid(M_c)`` weights most.
"""

from __future__ import annotations

import contextlib
import io
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import atomic_write, check_output_dir
from ..attention import AttentionMaps, record_attention
from ..bam import BAM
from ..errors import UsageError

PANEL_INCHES = 2.2
DPI = 100


def figure_size_px(num_images: int, num_bams: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the grid that :func:`plot_attention_grid` writes."""
    cols = 1 + 3 * num_bams
    return round(cols * PANEL_INCHES * DPI), round(num_images * PANEL_INCHES * DPI)


def plot_attention_grid(
    model: nn.Module, images: Tensor, path: str, top_k: int = 8, display: Tensor | None = None
) -> str:
    """Run ``model`` on ``images`` ``[N, C, H, W]`` and draw its BAM attention into ``path``.

    ``display``: the same images in [0, 1] to show; without it the model input is shown,
    stretched to [0, 1] per image. The PNG is written whole or not at all (``atomic_write``).
    """
    if top_k < 1:
        raise ValueError(f"plot_attention_grid: top_k must be at least 1, got {top_k}.")
    shown = images if display is None else display
    png = _draw_png(_record(model, images), shown, top_k, stretch=display is None)
    atomic_write(path, lambda f: f.write(png))
    return path


def _record(model: nn.Module, images: Tensor) -> dict[str, AttentionMaps]:
    model.eval()
    with record_attention(model) as maps, torch.no_grad():
        model(images)
    return maps


def _draw_png(maps: dict[str, AttentionMaps], shown: Tensor, top_k: int, stretch: bool) -> bytes:
    """The attention grid as PNG bytes: nothing touches the disk until it is all drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    n, (height, width) = shown.shape[0], shown.shape[-2:]
    shown = shown.detach().float()
    if stretch:
        low = shown.amin(dim=(1, 2, 3), keepdim=True)
        shown = (shown - low) / (shown.amax(dim=(1, 2, 3), keepdim=True) - low + 1e-8)
    shown = shown.clamp(0, 1)

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)

    cols = 1 + 3 * len(names)
    fig, axes = plt.subplots(
        n, cols, figsize=(cols * PANEL_INCHES, n * PANEL_INCHES), dpi=DPI, squeeze=False
    )
    try:
        for i in range(n):
            img = shown[i].permute(1, 2, 0).numpy()
            img = img[..., 0] if img.shape[-1] == 1 else img[..., :3]
            cmap = "gray" if img.ndim == 2 else None
            axes[i, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
            axes[i, 0].set_title("image", fontsize=8)
            for j, name in enumerate(names):
                att = maps[name]
                spatial = up(torch.sigmoid(att.spatial_logits[i : i + 1].float()))[0, 0]
                gate = up(att.gate[i : i + 1].float().mean(dim=1, keepdim=True))[0, 0]
                channel = torch.sigmoid(att.channel_logits[i].float())
                k = min(top_k, channel.numel())
                values, index = channel.topk(k)
                ax_s, ax_g, ax_c = axes[i, 1 + 3 * j], axes[i, 2 + 3 * j], axes[i, 3 + 3 * j]
                ax_s.imshow(img, cmap=cmap, vmin=0, vmax=1)
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
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def load_images(paths: list[str], in_chans: int, size: int, mean, std) -> tuple[Tensor, Tensor]:
    """Read image files, resize to ``size``; return (normalized input, [0, 1] for display).

    16-bit and float images are scaled by their depth (:func:`torch_bam.data.images.open_image`).
    A file that cannot be read raises :class:`UsageError` naming it.
    """
    from PIL import Image

    from ..data.images import open_image

    if in_chans not in (1, 3):
        raise UsageError(
            f"the model takes {in_chans} input channels; visualize reads grey (1) or RGB (3) "
            f"images only."
        )
    raw = []
    for p in paths:
        try:
            im = open_image(p, "L" if in_chans == 1 else "RGB")
        except FileNotFoundError:
            raise UsageError(f"no such image file: {p}. Check the path.") from None
        except IsADirectoryError:
            raise UsageError(f"image {p} is a directory. Pass image files.") from None
        except OSError as e:
            raise UsageError(
                f"cannot read image {p}: it is not an image, or it is empty, truncated or "
                f"corrupt ({e}). Pass PNG or JPEG files."
            ) from None
        im = im.resize((size, size), Image.BILINEAR)
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        raw.append(t.view(size, size, in_chans).permute(2, 0, 1).float() / 255)
    display = torch.stack(raw)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (display - m) / s, display


def visualize(checkpoint: str, images: list[str], out: str, top_k: int = 8) -> list[str]:
    """``torch-bam visualize``: one attention grid PNG for the given images, in ``out``.

    Every bad input (checkpoint, images, settings in the checkpoint, ``top_k``, ``out``) raises
    :class:`UsageError` before anything is written; ``out`` is created only for the picture,
    and removed again if the picture cannot be written.
    """
    from .checkpoint import input_settings, load_checkpoint

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("visualize needs matplotlib: pip install 'torch-bam[viz]'.") from None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UsageError(
            f"--top-k {top_k}: the number of channels shown per BAM must be at least 1."
        )
    if not images:
        raise UsageError("no images given. Pass one or more image files.")
    path = os.path.join(out, "attention.png")
    created = _check_out(out, path)
    missing = [p for p in images if not os.path.lexists(p)]
    if missing:
        raise UsageError(f"no such image file(s): {', '.join(missing)}. Check the paths.")
    model, meta = load_checkpoint(checkpoint)
    if not any(isinstance(m, BAM) for m in model.modules()):
        name = meta.get("model", meta.get("model_name"))
        raise UsageError(
            f"model {name} in {checkpoint} has no BAM block, so there is no attention to draw. "
            f"Pass a checkpoint of a BAM model (torch_bam.list_models('bam_*'))."
        )
    in_chans, size, mean, std = input_settings(meta, f"checkpoint {checkpoint}")
    x, display = load_images(images, in_chans, size, mean, std)
    try:
        maps = _record(model, x)
    except RuntimeError as e:
        reason = str(e).split("\n")[0][:200]
        raise UsageError(
            f"the model in {checkpoint} failed on {size}x{size} images ({reason}). Save the "
            f"checkpoint with the image_size it was trained on."
        ) from None
    png = _draw_png(maps, display, top_k, stretch=False)
    try:
        atomic_write(path, lambda f: f.write(png))
    except OSError as e:
        for d in created:  # the directories made for the picture, deepest first
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise UsageError(
            f"cannot write {path} ({e.strerror or e}). Choose a writable --out directory."
        ) from None
    return [path]


def _check_out(out: str, path: str) -> list[str]:
    """Refuse an ``out`` that cannot become a directory (or whose picture path is a directory);
    return the directories to create, deepest first, so that a failed write can remove them."""
    to_create = check_output_dir(out, "--out")
    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory. Remove it, or choose another --out.")
    return to_create
