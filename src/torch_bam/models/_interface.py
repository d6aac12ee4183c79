"""The timm model interface, shared by every registered network.

timm's models (``timm/models/resnet.py``) split ``forward`` into ``forward_features`` (the last
unpooled feature map) and ``forward_head`` (global pooling, dropout, classifier), and carry
``num_classes``, ``num_features``, ``head_hidden_size``, ``reset_classifier``,
``get_classifier``, ``set_grad_checkpointing``, ``group_matcher``, ``feature_info``,
``forward_intermediates`` and ``prune_intermediate_layers``. timm's
training script, its layer-wise decay (``param_groups_layer_decay``) and its feature
extraction use them. Only torch is imported here.

A network using :class:`TimmInterface` defines ``forward_features`` and, in ``__init__``,
calls :meth:`TimmInterface._init_interface` with its feature levels: for each level, the
dotted names of the modules that run, in order, from the previous level's output to this one
(the first level starts at the input). :class:`~torch_bam.models._features.FeatureNet` runs
those names, so the feature maps are the network's own, BAMs included.
"""

# No `from __future__ import annotations`: TorchScript reads the real annotations.
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["GlobalPool", "TimmInterface", "check_head_args", "feature_take_indices"]

POOL_TYPES = ("avg", "max", "")


def check_head_args(owner: str, num_classes: object, global_pool: object, drop_rate: object):
    """Clear errors for the head's arguments (timm's names) before anything is built."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise UsageError(
            f"{owner}: num_classes must be an integer >= 0, got {num_classes!r}. Use the number "
            f"of classes, or num_classes=0 for a model without classifier (pooled features)."
        )
    if global_pool not in POOL_TYPES:
        raise UsageError(
            f"{owner}: unknown global_pool={global_pool!r}. Use 'avg', 'max', or '' (no pooling, "
            f"only with num_classes=0)."
        )
    if global_pool == "" and num_classes > 0:
        raise UsageError(
            f"{owner}: global_pool='' (no pooling) needs num_classes=0: the classifier takes "
            f"pooled features. Pass num_classes=0 too, or a global_pool."
        )
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)):
        raise UsageError(f"{owner}: drop_rate must be a number in [0, 1), got {drop_rate!r}.")
    if not 0 <= drop_rate < 1:
        raise UsageError(f"{owner}: drop_rate must be in [0, 1), got {drop_rate}.")


class GlobalPool(nn.Module):
    """Global average (``"avg"``) or max (``"max"``) pooling to ``[B, C]``; ``""`` passes the
    map through unpooled (timm's ``SelectAdaptivePool2d`` with ``flatten=True``)."""

    pool_type: str

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        self.pool_type = pool_type

    def is_identity(self) -> bool:
        return self.pool_type == ""

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_type == "avg":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.pool_type == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)
        return x

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


class TimmInterface:
    """Mixin for an ``nn.Module`` network: timm's head and feature interface.

    The network sets ``self.fc`` through :meth:`_init_interface` (or keeps its own classifier
    module, named by ``classifier``) and defines ``forward_features``.
    """

    num_classes: int
    num_features: int
    head_hidden_size: int
    drop_rate: float
    grad_checkpointing: bool

    def _init_interface(
        self,
        num_features: int,
        num_classes: int,
        global_pool: str,
        drop_rate: float,
        levels: Sequence[tuple[Sequence[str], int, int]],
    ) -> None:
        """``levels``: ``(module names, channels, reduction)`` per feature level."""
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = float(drop_rate)
        self.grad_checkpointing = False
        self.feature_levels = [tuple(names) for names, _, _ in levels]
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=names[-1], index=i)
            for i, (names, c, r) in enumerate(levels)
        ]
        self.reset_classifier(num_classes, global_pool)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global pooling, dropout (``drop_rate``), then the classifier unless ``pre_logits``."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:  # noqa: UP045
        """A new classifier for ``num_classes`` (0: none, the model returns pooled features);
        ``global_pool`` ``"avg"``, ``"max"`` or ``""`` (no pooling, with ``num_classes=0``)."""
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        check_head_args(f"{type(self).__name__}.reset_classifier", num_classes, pool, 0.0)
        self.num_classes = num_classes
        self.global_pool = GlobalPool(pool)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward instead of keeping its activations (timm's API)."""
        self.grad_checkpointing = bool(enable)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for timm's layer-wise decay: the stem, then each block
        (each stage with ``coarse``); a stage's BAM comes right after its last block."""
        return self._group_matcher(coarse)

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,  # noqa: UP007, UP045
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's API: the feature maps of the levels ``indices`` (None: all; an int ``n``: the
        last ``n``; a list: those, negative ones from the last) and the last map.

        Returns ``(final, intermediates)``: ``final`` is :meth:`forward_features`'s output (with
        ``stop_early``, the last taken level's map: the levels after it are not run); with
        ``intermediates_only``, the list alone. ``norm`` is accepted for timm's signature:
        these networks have no final norm outside their levels. ``output_fmt``: ``"NCHW"``.
        """
        if output_fmt != "NCHW":
            raise UsageError(
                f"forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}."
            )
        take, last = feature_take_indices(len(self.feature_levels), indices)
        levels = self.feature_levels
        if stop_early or intermediates_only:
            levels = levels[: last + 1]
        intermediates = []
        for i, names in enumerate(levels):
            modules = [self.get_submodule(n) for n in names]
            if self.grad_checkpointing and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(_run_in_order, modules, x, use_reentrant=False)
            else:
                x = _run_in_order(modules, x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    @torch.jit.ignore
    def prune_intermediate_layers(
        self,
        indices: Union[int, list[int]] = 1,  # noqa: UP007
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """timm's API: replace the modules of the levels after the last of ``indices`` by
        ``nn.Identity`` (a module a kept level also runs stays), and, with ``prune_head``, the
        classifier and pooling (``reset_classifier(0, "")``). Returns the taken level indices
        (absolute). ``prune_norm`` is accepted for timm's signature (no final norm here)."""
        take, last = feature_take_indices(len(self.feature_levels), indices)
        kept = {n for names in self.feature_levels[: last + 1] for n in names}
        for names in self.feature_levels[last + 1 :]:
            for name in names:
                if name not in kept:
                    parent, _, child = name.rpartition(".")
                    setattr(self.get_submodule(parent) if parent else self, child, nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take

    @torch.jit.ignore
    def _forward_checkpointed(self, x: Tensor) -> Tensor:
        """``forward_features`` with each feature level recomputed in backward (as timm's
        ``checkpoint_seq``), for ``set_grad_checkpointing``."""
        from torch.utils.checkpoint import checkpoint

        for names in self.feature_levels:
            modules = [self.get_submodule(n) for n in names]
            x = checkpoint(_run_in_order, modules, x, use_reentrant=False)
        return x


def feature_take_indices(levels: int, indices=None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: the absolute level indices to take (None: all; an int
    ``n``: the last ``n``; a list: those, negative ones from the last) and the largest."""
    if indices is None:
        indices = levels
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= levels:
            raise UsageError(
                f"indices={indices}: the last n levels needs 1 <= n <= {levels} (this network "
                f"has {levels} feature levels)."
            )
        take = list(range(levels - indices, levels))
    else:
        take = []
        for i in indices:
            idx = levels + i if i < 0 else i
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= idx < levels:
                raise UsageError(
                    f"indices={list(indices)!r}: level numbers in 0..{levels - 1} (or negative, "
                    f"from the last); this network has {levels} feature levels."
                )
            take.append(idx)
        if not take:
            raise UsageError("indices=[]: name at least one level.")
    return take, max(take)


def _run_in_order(modules: list[nn.Module], x: Tensor) -> Tensor:
    for m in modules:
        x = m(x)
    return x
