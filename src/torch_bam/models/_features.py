"""Feature extraction: a network's feature maps at chosen levels, BAMs inside, for a
detection or segmentation neck (timm's ``features_only=True``).

A level is the output of a stem or a stage, taken after the stage's BAM: for the ImageNet
ResNets, the stem (stride 2) and ``bam1``, ``bam2``, ``bam3``, ``layer4`` (strides 4 to 32).
:class:`FeatureNet` keeps the network's modules under their own names, so a state_dict of the
network (less its classifier) loads into it, and runs them in the network's order.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["FeatureInfo", "FeatureNet"]


class FeatureInfo:
    """Channels, reduction (stride) and module name of each returned level, as timm's
    ``FeatureInfo``: ``channels()``, ``reduction()``, ``module_name()``, ``get_dicts()``."""

    def __init__(self, info: Sequence[dict], out_indices: Sequence[int]) -> None:
        self.info = [dict(d) for d in info]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None, idx=None) -> list[dict] | dict:
        picked = self.out_indices if idx is None else idx
        if isinstance(picked, int):
            d = self.info[picked]
            return dict(d) if keys is None else {k: d[k] for k in keys}
        return [
            dict(self.info[i]) if keys is None else {k: self.info[i][k] for k in keys}
            for i in picked
        ]

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.get_dicts()})"


def check_out_indices(owner: str, out_indices: object, levels: int) -> tuple[int, ...]:
    """Sorted, distinct level indices (negative ones count from the last level)."""
    if out_indices is None:
        return tuple(range(levels))
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        out_indices = (out_indices,)
    bad = not isinstance(out_indices, (tuple, list)) or not out_indices
    if not bad:
        bad = any(isinstance(i, bool) or not isinstance(i, int) for i in out_indices)
    if bad or any(not -levels <= i < levels for i in out_indices):
        raise UsageError(
            f"{owner}: out_indices must be level numbers in 0..{levels - 1} (or negative, from "
            f"the last), got {out_indices!r}. This network has {levels} feature levels."
        )
    picked = sorted({i % levels for i in out_indices})
    if len(picked) != len(out_indices):
        raise UsageError(f"{owner}: out_indices {out_indices!r} names a level twice.")
    return tuple(picked)


class FeatureNet(nn.Module):
    """The feature maps of ``model`` at ``out_indices`` (a list of tensors, shallow first).

    Args:
        model: a registered torch-bam network (it has ``feature_levels`` and
            ``feature_info``); its modules are taken over, the classifier is left out.
        out_indices: which levels; default all of them (``len(model.feature_info)``).

    Attributes:
        feature_info: :class:`FeatureInfo` of the returned levels.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels = getattr(model, "feature_levels", None)
        if levels is None:
            raise UsageError(
                f"FeatureNet: {type(model).__name__} has no feature levels; it takes the "
                f"networks of torch_bam.list_models()."
            )
        owner = f"features_only for {type(model).__name__}"
        self.out_indices = check_out_indices(owner, out_indices, len(levels))
        self.levels = [tuple(names) for names in levels[: max(self.out_indices) + 1]]
        needed = {n.split(".")[0] for names in self.levels for n in names}
        for name, child in model.named_children():
            if name in needed:  # under its own name: the network's state_dict keys
                self.add_module(name, child)
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)
        cfg = getattr(model, "pretrained_cfg", None)
        if cfg is not None:  # as timm: the configuration, less what belongs to the classifier
            cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier")}
            self.pretrained_cfg = self.default_cfg = cfg

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, names in enumerate(self.levels):
            for name in names:
                x = self.get_submodule(name)(x)
            if i in self.out_indices:
                features.append(x)
        return features
