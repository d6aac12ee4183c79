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
        channel_logits: ``M_c``, ``[B, C]``.
        spatial_logits: ``M_s``, ``[B, 1, H, W]``.
        combine: how the block combines them, ``"sum"`` or ``"product"``.
    """

    channel_logits: Tensor
    spatial_logits: Tensor
    combine: str = "sum"

    @property
    def gate(self) -> Tensor:
        """The combined 3-D gate ``sigmoid(M_c (+|*) M_s)``, ``[B, C, H, W]``, built on demand."""
        c = self.channel_logits[:, :, None, None]
        logits = c * self.spatial_logits if self.combine == "product" else c + self.spatial_logits
        return torch.sigmoid(logits)


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

        def on_channel(_m, _inp, out, pending=pending):
            pending["c"] = out.detach()

        def on_spatial(_m, _inp, out, name=name, block=block, pending=pending):
            maps[name] = AttentionMaps(pending.pop("c"), out.detach(), block.combine)

        handles.append(block.channel_att.register_forward_hook(on_channel))
        handles.append(block.spatial_att.register_forward_hook(on_spatial))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()
