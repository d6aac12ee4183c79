"""Frozen BatchNorm: a BatchNorm's affine map with fixed statistics and fixed scale and shift.

Detectors train with one or two images per GPU, too few for batch statistics, so their
backbones use frozen BatchNorm (torchvision's ``FrozenBatchNorm2d``, timm's
``FrozenBatchNorm2d``, detectron2's). A BAM put into such a backbone gets the same
(``BAM(norm="frozen")``, ``add_bam(norm="auto")``): :class:`FrozenBatchNorm` here, for the
channel gate's ``[B, C]`` and the spatial gate's ``[B, C, H, W]`` (only torch is imported).

Its state_dict keys are a BatchNorm's (``weight``, ``bias``, ``running_mean``,
``running_var``), and ``num_batches_tracked`` is accepted and dropped on load, so a BAM with
frozen norms loads a BAM checkpoint with ``strict=True`` and the other way round, less that key.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm", "is_frozen_norm"]


class FrozenBatchNorm(nn.Module):
    """``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel (dim 1),
    all four buffers, none trained; the same in training and in eval, for any batch size.

    Args:
        num_features: channels ``C``.
        eps: added to the variance, as BatchNorm's.

    Shape:
        input ``[B, C]`` or ``[B, C, *]``, output the same.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **fk))
        self.register_buffer("bias", torch.zeros(num_features, **fk))
        self.register_buffer("running_mean", torch.zeros(num_features, **fk))
        self.register_buffer("running_var", torch.ones(num_features, **fk))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> FrozenBatchNorm:
        """The frozen copy of a BatchNorm (1d or 2d): its statistics, scale and shift now."""
        p = bn.running_mean if bn.running_mean is not None else bn.weight
        frozen = cls(bn.num_features, bn.eps, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BatchNorm's; nothing here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def is_frozen_norm(m: nn.Module) -> bool:
    """A norm layer that neither learns nor updates statistics in training: a frozen
    BatchNorm class (ours, torchvision's, timm's: by name, so that neither is imported), or a
    BatchNorm whose scale and shift do not train (``requires_grad=False``, as detection code
    freezes them)."""
    if isinstance(m, FrozenBatchNorm) or type(m).__name__.startswith("FrozenBatchNorm"):
        return True
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        params = [p for p in (m.weight, m.bias) if p is not None]
        return bool(params) and not any(p.requires_grad for p in params)
    return False
