"""Read BAM's attention maps without adding parameters or changing the forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .bam import BAM

__all__ = ["AttentionMaps", "record_attention"]


@dataclass
class AttentionMaps:
    """The last attention of one BAM block, detached.

    Attributes:
        channel_logits: ``M_c``, ``[B, C]``; None for a spatial-only BAM.
        spatial_logits: ``M_s``, ``[B, 1, H, W]``; None for a channel-only BAM.
        combine: how the block combines them, ``"sum"``, ``"max"`` or ``"product"``.
    """

    channel_logits: Tensor | None
    spatial_logits: Tensor | None
    combine: str = "sum"

    @property
    def gate(self) -> Tensor:
        """The gate ``sigmoid(M_c (+|max|*) M_s)``, built on demand: ``[B, C, H, W]``, or the
        one map of a one-gate BAM (``[B, C, 1, 1]`` or ``[B, 1, H, W]``)."""
        if self.channel_logits is None:
            return torch.sigmoid(self.spatial_logits)
        c = self.channel_logits[:, :, None, None]
        if self.spatial_logits is None:
            return torch.sigmoid(c)
        if self.combine == "product":
            return torch.sigmoid(c * self.spatial_logits)
        if self.combine == "max":
            return torch.sigmoid(torch.maximum(c, self.spatial_logits))
        return torch.sigmoid(c + self.spatial_logits)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, AttentionMaps]]:
    """Record the attention of every BAM inside ``model`` while the block is active.

    Yields a dict from each BAM's module path (``""`` when ``model`` is itself a BAM) to its
    :class:`AttentionMaps`, refreshed on every forward pass. Hooks are removed on exit.

    Examples:
        >>> with record_attention(model) as maps:
        ...     model(images)
        >>> maps["layer1.bam"].spatial_logits.shape
    """
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, BAM)]
    if not blocks:
        raise ValueError(
            f"record_attention: {type(model).__name__} contains no BAM module. Add one with "
            f"torch_bam.BAM(channels) or torch_bam.add_bam(model)."
        )
    maps: dict[str, AttentionMaps] = {}
    handles = []
    for name, block in blocks:
        pending: dict[str, Tensor] = {}

        def on_channel(_m, _inp, out, name=name, block=block, pending=pending):
            pending["c"] = out.detach()
            if block.spatial_att is None:  # channel-only BAM: this is its one map
                maps[name] = AttentionMaps(pending.pop("c"), None, block.combine)

        def on_spatial(_m, _inp, out, name=name, block=block, pending=pending):
            maps[name] = AttentionMaps(pending.pop("c", None), out.detach(), block.combine)

        if block.channel_att is not None:
            handles.append(block.channel_att.register_forward_hook(on_channel))
        if block.spatial_att is not None:
            handles.append(block.spatial_att.register_forward_hook(on_spatial))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
