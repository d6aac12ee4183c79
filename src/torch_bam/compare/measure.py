"""What a comparison measures on its test split: each variant's top-1 error, and the pointing game.

The pointing game (images with object boxes): how often a map's peak falls inside the object's
box. Every spatial attention map (BAM's ``M_s``, CBAM's spatial map) is read at the deepest
bottleneck of the reference network (where BAM's last map is), beside controls that owe nothing
to attention: chance, the centre prior, image intensity (:mod:`torch_bam.pointing`), the
reference's own feature norm and Grad-CAM there (:mod:`.saliency`), and each network before
training. Every measured quantity is a list with one value per seed; a control that does not
depend on the seed repeats its value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .saliency import feature_norm_and_grad_cam

__all__ = ["Site", "find_site", "map_at", "measure", "spatial_maps"]

BATCH = 250  # test images per forward pass


@dataclass(frozen=True)
class Site:
    """Where the pointing game reads its maps: the output of the reference's module ``layer``,
    ``size`` = (h, w); ``spatial``: the variants with a spatial map of that size."""

    layer: str
    size: tuple[int, int]
    spatial: list[str]


def spatial_maps(model: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """``(maps, logits)``: every spatial attention logit map ``[B, 1, h, w]`` in forward order
    (BAM's ``M_s``, CBAM's spatial map before its sigmoid), and the network's logits."""
    from ..bam import BAM

    found: list[Tensor] = []
    handles = []
    for m in model.modules():
        if isinstance(m, BAM) and m.spatial_att is not None:
            target = m.spatial_att
        elif type(m).__name__ == "CbamModule":
            target = m.spatial.conv  # timm's CBAM: the 7x7 conv's map, before the gate
        else:
            continue
        handles.append(target.register_forward_hook(lambda _m, _i, out: found.append(out)))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return [f.detach() for f in found], logits


def map_at(maps: list[Tensor], size: tuple[int, int]) -> Tensor | None:
    """The last of ``maps`` whose side is ``size`` (``None`` if none is)."""
    same = [m for m in maps if tuple(m.shape[-2:]) == size]
    return same[-1] if same else None


def find_site(models: dict[str, nn.Module], reference: str, x: Tensor) -> Site | None:
    """The deepest bottleneck of the reference with a map larger than 1x1, and the variants
    (of ``models``, one seed's) that have a spatial map there; ``None`` where there is none."""
    from ..insert import bottlenecks

    points = [p for p in bottlenecks(models[reference], x[:2]) if p[2][0] * p[2][1] > 1]
    if not points:
        return None
    layer, _, size = points[-1]
    size = tuple(size)
    spatial = [v for v, m in models.items() if map_at(spatial_maps(m, x[:2])[0], size) is not None]
    return Site(layer, size, spatial)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def measure(
    models: dict[int, dict[str, nn.Module]],
    untrained: Callable[[int, str], nn.Module],
    reference: str,
    x: Tensor,
    y: Tensor,
    boxes: Tensor | None,
    box_side: int | None,
) -> tuple[dict[str, list[float]], dict[str, list[float]] | None, Site | None]:
    """``(errors, pointing, site)``: per seed, the test error of each variant and, where
    ``boxes`` are given, the hit rate of each map; ``untrained(seed, variant)`` builds the
    network before training."""
    from ..pointing import centre_prior, chance_rate, intensity_map, pointing_hits

    seeds = list(models)
    names = list(models[seeds[0]])
    n, image = len(x), tuple(x.shape[-2:])
    errors: dict[str, list[float]] = {v: [] for v in names}
    site = find_site(models[seeds[0]], reference, x) if boxes is not None else None
    pointing, seeded = None, []
    if site is not None:
        fixed = {
            "chance (box area / image area)": chance_rate(boxes, image).mean(),
            "centre prior": pointing_hits(centre_prior(n, image), boxes, image).float().mean(),
            "image intensity": pointing_hits(intensity_map(x, box_side), boxes, image)
            .float()
            .mean(),
        }
        # These do not depend on the seed: the same value for every seed (spread 0).
        pointing = {k: [float(v)] * len(seeds) for k, v in fixed.items()}
        seeded = [f"{reference} feature norm", f"{reference} Grad-CAM"]
        for v in site.spatial:
            seeded += [f"untrained {v}", v]
        pointing.update({k: [] for k in seeded})
    for seed in seeds:
        wrong = {v: 0 for v in names}
        hits = {k: 0 for k in seeded}
        raw = {v: untrained(seed, v) for v in site.spatial} if site else {}

        def hit(key, m, s, hits=hits):
            hits[key] += int(pointing_hits(m, boxes[s], image).sum())

        for s in [slice(i, min(i + BATCH, n)) for i in range(0, n, BATCH)]:
            xb = x[s]
            for v in names:
                model = models[seed][v]
                spatial = site is not None and v in site.spatial
                if spatial:
                    maps, logits = spatial_maps(model, xb)
                    hit(v, map_at(maps, site.size), s)
                    hit(f"untrained {v}", map_at(spatial_maps(raw[v], xb)[0], site.size), s)
                if site is not None and v == reference:
                    norm, cam, logits = feature_norm_and_grad_cam(model, site.layer, xb)
                    hit(f"{v} feature norm", norm, s)
                    hit(f"{v} Grad-CAM", cam, s)
                elif not spatial:
                    with torch.no_grad():
                        logits = model.eval()(xb.to(_device_of(model))).cpu()
                wrong[v] += int((logits.argmax(1) != y[s]).sum())
        for v in names:
            errors[v].append(wrong[v] / n)
        for k in hits:
            pointing[k].append(hits[k] / n)
    return errors, pointing, site
