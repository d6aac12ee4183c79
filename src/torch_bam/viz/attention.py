"""The hierarchical attention figure: for each BAM stage, where the network looks.

Per image (a row): the image as the model saw it, titled with the predicted class and its
probability; per BAM stage (a group of three columns): the spatial attention ``sigmoid(M_s)``
upsampled to the image's size, the combined 3-D attention averaged over channels, and a bar
chart of the channels the channel gate ``sigmoid(M_c)`` weights most, with a dashed line at the
median of all its channels. Every map uses one colour map
(:data:`CMAP`) on one fixed scale, 0 to 1 (every map is a sigmoid), with a colour bar, so maps
of different images and stages compare by colour.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import atomic_write, check_output_dir
from ..attention import AttentionMaps, record_attention
from ..bam import BAM
from ..errors import UsageError
from .style import DPI, TEXT_PT

PANEL_INCHES = 2.2
CMAP = "viridis"  # perceptually uniform: equal steps of attention look like equal steps
MEDIAN_LABEL = "median of all channels"


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
    maps, logits = _record(model, images)
    png = _draw_png(maps, shown, top_k, stretch=display is None, logits=logits)
    atomic_write(path, lambda f: f.write(png))
    return path


def _record(model: nn.Module, images: Tensor) -> tuple[dict[str, AttentionMaps], Any]:
    model.eval()
    with record_attention(model) as maps, torch.no_grad():
        logits = model(images)
    return maps, logits


def _draw_png(
    maps: dict[str, AttentionMaps],
    shown: Tensor,
    top_k: int,
    stretch: bool,
    logits: Any = None,
    titles: list[str] | None = None,
) -> bytes:
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
    probs = None
    if isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[0] == n:
        probs = torch.softmax(logits.detach().float(), dim=1)

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)

    cols = 1 + 3 * len(names)
    fig, axes = plt.subplots(
        n,
        cols,
        figsize=(cols * PANEL_INCHES, n * PANEL_INCHES),
        dpi=DPI,
        squeeze=False,
        layout="constrained",  # leaves room for each colour bar's labels, unlike tight_layout
        # The first column's title holds a file name and its sizes: give it room.
        gridspec_kw={"width_ratios": [1.4] + [1] * (cols - 1)},
    )
    try:
        for i in range(n):
            img = shown[i].permute(1, 2, 0).numpy()
            img = img[..., 0] if img.shape[-1] == 1 else img[..., :3]
            grey = "gray" if img.ndim == 2 else None
            axes[i, 0].imshow(img, cmap=grey, vmin=0, vmax=1)
            head = [titles[i]] if titles else ["image"]
            if probs is not None:
                p, label = probs[i].max(dim=0)
                head.append(f"predicted {label.item()} (p {p.item():.2f})")
            axes[i, 0].set_title("\n".join(head), fontsize=TEXT_PT)
            for j, name in enumerate(names):
                att = maps[name]
                if att.spatial_logits is None or att.channel_logits is None:
                    raise ValueError(
                        f"visualize draws both of a BAM's maps, but {name} is a one-gate BAM "
                        f"(the paper's ablation): read its one map with record_attention."
                    )
                spatial = up(torch.sigmoid(att.spatial_logits[i : i + 1].float()))[0, 0]
                gate = up(att.gate[i : i + 1].float().mean(dim=1, keepdim=True))[0, 0]
                channel = torch.sigmoid(att.channel_logits[i].float())
                k = min(top_k, channel.numel())
                values, index = channel.topk(k)
                median = float(channel.median())
                ax_s, ax_g, ax_c = axes[i, 1 + 3 * j], axes[i, 2 + 3 * j], axes[i, 3 + 3 * j]
                im_s = ax_s.imshow(spatial.numpy(), cmap=CMAP, vmin=0, vmax=1)
                ax_s.set_title(f"{name}: spatial\nsigmoid(M_s)", fontsize=TEXT_PT)
                bar = fig.colorbar(im_s, ax=ax_s, fraction=0.046, pad=0.04)
                bar.ax.tick_params(labelsize=TEXT_PT)
                im_g = ax_g.imshow(gate.numpy(), cmap=CMAP, vmin=0, vmax=1)
                ax_g.set_title(f"{name}: 3-D attention\nmean over channels", fontsize=TEXT_PT)
                bar = fig.colorbar(im_g, ax=ax_g, fraction=0.046, pad=0.04)
                bar.ax.tick_params(labelsize=TEXT_PT)
                ax_c.bar(range(k), values.numpy(), color=matplotlib.colormaps[CMAP](values.numpy()))
                # Where the top channels stand: the median of all the gate's channels.
                ax_c.axhline(median, color="black", ls="--", lw=1.2, label=MEDIAN_LABEL)
                ax_c.set_xticks(
                    range(k), [str(c) for c in index.tolist()], fontsize=TEXT_PT, rotation=90
                )
                ax_c.set_ylim(0, 1)
                ax_c.tick_params(axis="y", labelsize=TEXT_PT)
                ax_c.set_title(
                    f"{name}: top {k} of {channel.numel()}\nchannels, sigmoid(M_c)",
                    fontsize=TEXT_PT,
                )
                ax_c.set_xlabel(f"dashed: median ({median:.2f})", fontsize=TEXT_PT)
            for ax in axes[i]:
                if ax.images:
                    ax.set_xticks([])
                    ax.set_yticks([])
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _fit_to(im, pre) -> tuple[Any, str, str]:
    """``im`` as the model's data were prepared (shorter side resized to ``resize_size``,
    centre crop ``image_size``, the checkpoint's interpolation); what was done, in words and as
    a chain of sizes (``64x48 -> 42x32 -> 32x32``)."""
    from PIL import Image

    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    w, h = im.size
    done, chain = [], [f"{w}x{h}"]
    if min(w, h) != pre.resize_size:
        # As torchvision's Resize(int): the shorter side to the size, the aspect ratio kept.
        scale = pre.resize_size / min(w, h)
        nw, nh = (pre.resize_size, int(h * scale)) if w <= h else (int(w * scale), pre.resize_size)
        im = im.resize((nw, nh), filters[pre.interpolation])
        done.append(f"resized {w}x{h} to {nw}x{nh} ({pre.interpolation})")
        chain.append(f"{nw}x{nh}")
        w, h = nw, nh
    size = pre.image_size
    if (w, h) != (size, size):
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
        done.append(f"centre-cropped {w}x{h} to {size}x{size}")
        chain.append(f"{size}x{size}")
    if not done:
        return im, f"{size}x{size}, as is", f"{size}x{size}"
    return im, ", ".join(done), " -> ".join(chain)


def load_images(paths: list[str], pre) -> tuple[Tensor, Tensor, list[tuple[str, str]]]:
    """Read image files as the checkpoint's model saw its data (``pre``, a
    :class:`~torch_bam.viz.checkpoint.Preprocessing`); return (normalized input, the same in
    [0, 1] for display, for each what was resized or cropped: ``(in words, chain of sizes)``).

    16-bit and float images are scaled by their depth (:func:`torch_bam.data.images.open_image`).
    A file that cannot be read raises :class:`UsageError` naming it.
    """
    from ..data.images import open_image

    in_chans, size = pre.in_chans, pre.image_size
    if in_chans not in (1, 3):
        raise UsageError(
            f"the model takes {in_chans} input channels; visualize reads grey (1) or RGB (3) "
            f"images only."
        )
    raw, notes = [], []
    for p in paths:
        try:
            im = open_image(p, "L" if in_chans == 1 else "RGB")
            im, note, chain = _fit_to(im, pre)
        except FileNotFoundError:
            raise UsageError(f"no such image file: {p}. Check the path.") from None
        except IsADirectoryError:
            raise UsageError(f"image {p} is a directory. Pass image files.") from None
        except OSError as e:
            raise UsageError(
                f"cannot read image {p}: it is not an image, or it is empty, truncated or "
                f"corrupt ({e}). Pass PNG or JPEG files."
            ) from None
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        raw.append(t.view(size, size, in_chans).permute(2, 0, 1).float() / 255)
        notes.append((note, chain))
    display = torch.stack(raw)
    m = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (display - m) / s, display, notes


def visualize(
    checkpoint: str,
    images: list[str],
    out: str,
    top_k: int = 8,
    echo: Callable[[str], None] | None = None,
) -> list[str]:
    """``torch-bam visualize``: one attention grid PNG for the given images, in ``out``.

    The images are prepared as the checkpoint records its model's training data were
    (:func:`~torch_bam.viz.checkpoint.preprocessing`): what was resized or cropped is said in
    each image's title and, with ``echo`` (the command passes ``print``), on the console.

    Every bad input (checkpoint, images, settings in the checkpoint, ``top_k``, ``out``) raises
    :class:`UsageError` before anything is written; ``out`` is created only for the picture,
    and removed again if the picture cannot be written.
    """
    from .checkpoint import load_checkpoint, preprocessing

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
    pre = preprocessing(meta, f"checkpoint {checkpoint}")
    x, display, notes = load_images(images, pre)
    size = pre.image_size
    try:
        maps, logits = _record(model, x)
    except RuntimeError as e:
        reason = str(e).split("\n")[0][:200]
        raise UsageError(
            f"the model in {checkpoint} failed on {size}x{size} images ({reason}). Save the "
            f"checkpoint with the image_size it was trained on."
        ) from None
    if echo is not None:
        data = f", {pre.dataset}" if pre.dataset else ""
        echo(
            f"preprocessing as in training (recorded in the checkpoint{data}): "
            f"{pre.in_chans} channel(s), shorter side {pre.resize_size} ({pre.interpolation}), "
            f"centre crop {size}x{size}, mean {pre.mean}, std {pre.std}"
        )
        for image, (note, _) in zip(images, notes, strict=True):
            echo(f"{image}: {note}")
    titles = [
        f"{os.path.basename(p)[:28]}\n{chain}" for p, (_, chain) in zip(images, notes, strict=True)
    ]
    png = _draw_png(maps, display, top_k, stretch=False, logits=logits, titles=titles)
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
