"""``torch-bam eval``: a pretrained network's top-1 / top-5 on an ImageNet-style folder, with
the weights' own preprocessing, beside the accuracy their authors publish.

The folder has ImageNet's validation layout: one sub-folder per class, whose sorted names give
the class indices (the 1000 WordNet ids ``n01440764`` ... for ImageNet). Images are resized so
that the centre crop of ``input_size`` is ``crop_pct`` of the short side, centre-cropped, and
normalised with the configuration's mean and std (timm's and torchvision's eval transform).
Needs torchvision (the ``train`` extra).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .errors import UsageError

__all__ = ["evaluate", "transform_for"]


def transform_for(cfg):
    """The eval transform of a :class:`~torch_bam.models._cfg.PretrainedCfg`."""
    from torchvision import transforms as T

    size = cfg.input_size[-1]
    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
    if cfg.interpolation not in modes:
        raise UsageError(f"{cfg.name}: unsupported interpolation {cfg.interpolation!r}.")
    return T.Compose(
        [
            T.Resize(math.floor(size / cfg.crop_pct), interpolation=modes[cfg.interpolation]),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


def evaluate(
    name: str,
    data: str,
    file: str | None = None,
    batch_size: int = 50,
    workers: int = 2,
    device: str = "cpu",
) -> dict:
    """Top-1 / top-5 (%) and images/s of ``name`` (``arch.tag``) on ``data``
    (``imagefolder:PATH``), with the published figures beside them."""
    from .models import create_model
    from .models._cfg import get_pretrained_cfg

    if not data.startswith("imagefolder:"):
        raise UsageError(f"--data must be imagefolder:PATH (class folders), got {data!r}.")
    root = Path(data.removeprefix("imagefolder:")).expanduser()
    if not root.is_dir():
        raise UsageError(f"no such image folder: {root}.")
    cfg = get_pretrained_cfg(name, pretrained=True)
    if cfg is None or not cfg.has_weights:
        from .models import list_pretrained

        raise UsageError(
            f"{name} has no pretrained weights to evaluate; choose one of "
            f"{', '.join(list_pretrained())}."
        )
    if batch_size < 1 or workers < 0:
        raise UsageError("--batch-size must be at least 1 and --workers at least 0.")
    try:
        from torchvision.datasets import ImageFolder
    except ImportError as e:
        raise UsageError(f"eval needs torchvision ({e}): pip install 'torch-bam[train]'.") from None
    from .data.images import load_rgb

    try:
        # The package's image reader: deep (16-bit, float) pixels scaled by their bit depth.
        dataset = ImageFolder(str(root), transform=transform_for(cfg), loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"cannot read {root} as class folders of images: {e}") from None
    if len(dataset.classes) != cfg.num_classes:
        raise UsageError(
            f"{root} has {len(dataset.classes)} class folders but {cfg.name} has "
            f"{cfg.num_classes} classes; the folder needs one sub-folder per class (ImageNet's "
            f"validation set sorted into its {cfg.num_classes} WordNet-id folders)."
        )
    model = create_model(cfg.name, num_classes=cfg.num_classes, pretrained=True, file=file)
    model = model.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    correct1 = correct5 = seen = 0
    start = time.perf_counter()
    with torch.inference_mode():
        try:
            for images, labels in loader:
                logits = model(images.to(device))
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()
                hit = top == labels[:, None]
                correct1 += hit[:, 0].sum().item()
                correct5 += hit.any(dim=1).sum().item()
                seen += len(labels)
        except OSError as e:
            # load_rgb's message names the file; from a loader process it is the last line of
            # the worker's traceback, which the DataLoader puts in the message.
            lines = str(e).strip().splitlines() or [repr(e)]
            raise UsageError(lines[-1].removeprefix("OSError: ")) from None
    seconds = time.perf_counter() - start
    return dict(
        name=cfg.name,
        images=seen,
        top1=100.0 * correct1 / seen,
        top5=100.0 * correct5 / seen,
        images_per_s=seen / seconds,
        published_top1=cfg.published_top1,
        published_top5=cfg.published_top5,
    )


def report(result: dict) -> str:
    def pub(v):
        return "n/a" if v is None else f"{v:.2f}"

    return (
        f"{result['name']}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  on "
        f"{result['images']} images, {result['images_per_s']:.1f} images/s  (published: "
        f"top-1 {pub(result['published_top1'])}, top-5 {pub(result['published_top5'])})"
    )
