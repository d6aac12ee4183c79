"""The pictures of a run, the same for ``demo`` and ``compare``, each written whole or not at all.

- ``learning_curves.png``: training loss and validation error per epoch, every variant, with a
  band across seeds (:mod:`torch_bam.viz.curves`);
- ``error_vs_cost.png``: test error against the measured training-step time, one point per
  variant with its spread (:mod:`torch_bam.viz.compare`);
- ``attention.png``, where the pointing game was played: the maps it scored, of the first seed's
  networks on the first test images (:mod:`torch_bam.viz.pointing_maps`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .measure import Site, map_at, spatial_maps

__all__ = ["FILES", "attention_maps", "write_pictures"]

FILES = {
    "learning_curves": "learning_curves.png",
    "error_vs_cost": "error_vs_cost.png",
    "attention": "attention.png",
}
NUM_IMAGES = 4  # test images in the attention figure


def attention_maps(
    models: dict[str, nn.Module],
    untrained: Callable[[str], nn.Module],
    reference: str,
    site: Site,
    x: Tensor,
    box_side: int | None,
) -> dict:
    """The attention figure's panels on images ``x``: image intensity, the reference's feature
    norm and Grad-CAM, then each spatial map before and after training (``sigmoid``: the gate
    the network applies), and the channel gate of the last variant that has BAM's two gates."""
    from ..pointing import intensity_map
    from .saliency import channel_gate_at, feature_norm_and_grad_cam

    norm, cam, logits = feature_norm_and_grad_cam(models[reference], site.layer, x)
    maps = {
        "image intensity": intensity_map(x, box_side),
        f"{reference}: feature norm": norm,
        f"{reference}: Grad-CAM": cam,
    }
    predictions = {reference: logits.argmax(1)}
    probabilities, gate, gate_name = [], None, None
    for v in site.spatial:
        trained, logits = spatial_maps(models[v], x)
        raw, _ = spatial_maps(untrained(v), x)
        title = "M_s" if _is_bam(models[v]) else "spatial map"  # BAM's name, or CBAM's
        for name, m in ((f"untrained {v}", raw), (v, trained)):
            maps[f"{name}: sigmoid({title})"] = torch.sigmoid(map_at(m, site.size))
            probabilities.append(f"{name}: sigmoid({title})")
        predictions[v] = logits.argmax(1)
        found = channel_gate_at(models[v], site.size, x)
        if found is not None:
            gate_name, gate = f"{found[0]} of {v}", torch.sigmoid(found[1])
    return dict(
        maps=maps,
        predictions=predictions,
        probabilities=probabilities,
        channel_gate=gate,
        bam_name=gate_name,
    )


def _is_bam(model: nn.Module) -> bool:
    from ..bam import BAM

    return any(isinstance(m, BAM) for m in model.modules())


def write_pictures(report: dict, out: str, attention: Callable[[], tuple] | None = None) -> dict:
    """Write the pictures of ``report`` into ``out``; returns ``{kind: file name}``.

    ``attention``: where the pointing game was played, a function returning ``(images, boxes,
    labels, panels)`` for the attention figure (``panels`` from :func:`attention_maps`).
    """
    from ..viz.compare import plot_error_vs_cost
    from ..viz.curves import plot_learning_curves
    from ..viz.pointing_maps import plot_pointing_maps

    files = {k: FILES[k] for k in ("learning_curves", "error_vs_cost")}
    plot_learning_curves(report["history"], os.path.join(out, files["learning_curves"]))
    plot_error_vs_cost(report, os.path.join(out, files["error_vs_cost"]))
    if attention is not None:
        images, boxes, labels, panels = attention()
        files["attention"] = FILES["attention"]
        path = os.path.join(out, FILES["attention"])
        plot_pointing_maps(images, boxes, labels, path=path, **panels)
    return files
