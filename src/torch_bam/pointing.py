"""The pointing game: does a spatial attention map peak inside the object's box?

A hit is an image whose attention maximum, upsampled to the image, falls inside its box. Chance
is the box area over the image area: a uniformly random peak lands in the box that often.

A hit rate means little on its own: where objects sit near the centre, or are the brightest
thing in the image, a map that knows nothing about the network scores high. :func:`centre_prior`
and :func:`intensity_map` build those two maps, so that a reported hit rate can be set beside
them on the same images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["centre_prior", "chance_rate", "intensity_map", "pointing_game", "pointing_hits"]


def _check_boxes(boxes: Tensor, batch: int) -> None:
    if boxes.dim() != 2 or boxes.shape != (batch, 4):
        raise ValueError(
            f"pointing game: boxes must be [B, 4] (x0, y0, x1, y1) in pixels with B={batch}, "
            f"got shape {tuple(boxes.shape)}."
        )


def pointing_hits(attention: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Per image, whether the peak of ``attention`` lies inside its box.

    Args:
        attention: ``[B, 1, h, w]`` or ``[B, h, w]`` spatial map (logits or sigmoid: the peak is
            the same); bilinearly upsampled to ``image_size`` before taking the peak.
        boxes: ``[B, 4]`` boxes ``(x0, y0, x1, y1)`` in image pixels, ``x1``/``y1`` exclusive.
        image_size: ``(H, W)`` of the images the boxes refer to.

    Returns:
        ``[B]`` bool tensor.
    """
    if attention.dim() == 3:
        attention = attention[:, None]
    if attention.dim() != 4 or attention.shape[1] != 1:
        raise ValueError(
            f"pointing game: attention must be [B, 1, h, w] or [B, h, w], got shape "
            f"{tuple(attention.shape)}. Pass AttentionMaps.spatial_logits."
        )
    batch = attention.shape[0]
    _check_boxes(boxes, batch)
    height, width = image_size
    up = F.interpolate(
        attention.float(), size=(height, width), mode="bilinear", align_corners=False
    )
    flat = up.flatten(1).argmax(dim=1)
    ys, xs = flat // width, flat % width
    boxes = boxes.to(flat.device)
    return (xs >= boxes[:, 0]) & (xs < boxes[:, 2]) & (ys >= boxes[:, 1]) & (ys < boxes[:, 3])


def chance_rate(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Per image, the box area over the image area: the hit rate of a uniformly random peak."""
    _check_boxes(boxes, boxes.shape[0] if boxes.dim() == 2 else -1)
    height, width = image_size
    w = (boxes[:, 2].clamp(max=width) - boxes[:, 0].clamp(min=0)).clamp(min=0)
    h = (boxes[:, 3].clamp(max=height) - boxes[:, 1].clamp(min=0)).clamp(min=0)
    return (w * h).float() / float(height * width)


def pointing_game(
    attention: Tensor, boxes: Tensor, image_size: tuple[int, int]
) -> tuple[float, float]:
    """Mean hit rate and mean chance rate over a batch, as ``(hit_rate, chance)``."""
    hits = pointing_hits(attention, boxes, image_size)
    return hits.float().mean().item(), chance_rate(boxes, image_size).mean().item()


def centre_prior(batch: int, image_size: tuple[int, int]) -> Tensor:
    """``[B, 1, H, W]`` maps that peak at the centre pixel of every image, whatever it shows."""
    height, width = image_size
    maps = torch.zeros(batch, 1, height, width)
    maps[:, :, height // 2, width // 2] = 1.0
    return maps


def intensity_map(images: Tensor, window: int) -> Tensor:
    """``[B, 1, H, W]``: the image's mean intensity over channels, box-blurred over ``window``.

    Its peak is the brightest ``window x window`` patch: the hit rate of a "look where the ink
    is" rule that needs no network. Use the object's size as ``window``.
    """
    if images.dim() != 4:
        raise ValueError(f"intensity_map: images must be [B, C, H, W], got {tuple(images.shape)}.")
    if window < 1:
        raise ValueError(f"intensity_map: window must be at least 1 pixel, got {window}.")
    height, width = images.shape[-2:]
    gray = images.float().mean(dim=1, keepdim=True)
    blurred = F.avg_pool2d(gray, window, stride=1, padding=window // 2, count_include_pad=False)
    return blurred[..., :height, :width]
