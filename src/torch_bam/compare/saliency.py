"""Controls of the pointing game read from a network, and BAM's channel gate for the figure.

A control answers "would a map that owes nothing to attention point as well?". Besides the maps
of :mod:`torch_bam.pointing` (centre prior, image intensity), these read the trained reference
network at the same depth as BAM: the norm of its features there, and Grad-CAM (the features
weighted by the gradient of the predicted class, Selvaraju et al. 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention import record_attention
from ..bam import BAM

__all__ = ["channel_gate_at", "feature_norm_and_grad_cam"]


def channel_gate_at(
    model: nn.Module, size: tuple[int, int], x: Tensor
) -> tuple[str, Tensor] | None:
    """``(name, channel_logits [B, C])`` of the last BAM (in forward order) with both gates
    whose spatial map is ``size`` (h, w); ``None`` where there is none."""
    if not any(isinstance(m, BAM) for m in model.modules()):
        return None
    with record_attention(model.eval()) as maps, torch.no_grad():
        model(x)
    found = [
        (n, m.channel_logits)
        for n, m in maps.items()
        if m.channel_logits is not None
        and m.spatial_logits is not None
        and tuple(m.spatial_logits.shape[-2:]) == tuple(size)
    ]
    return found[-1] if found else None


def feature_norm_and_grad_cam(
    model: nn.Module, layer: str, x: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(feature_norm, grad_cam, logits)`` of ``model`` at the output of module ``layer``.

    Both maps are ``[B, 1, h, w]``. Grad-CAM explains the predicted class: ``relu(sum_c w_c
    F_c)`` with ``w_c`` the spatial mean of ``d logit / d F_c``. The model runs in eval mode,
    so every image's map depends on that image alone.
    """
    model.eval()
    seen: dict[str, Tensor] = {}

    def keep(module, inputs, output):
        seen["f"] = output

    handle = model.get_submodule(layer).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            f = seen["f"]
            score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            (grad,) = torch.autograd.grad(score, f)
    finally:
        handle.remove()
    f = f.detach()
    norm = f.norm(dim=1, keepdim=True)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * f).sum(dim=1, keepdim=True))
    return norm, cam, logits.detach()
