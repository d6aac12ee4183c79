"""Feature extraction: a network's feature maps at chosen levels, BAMs inside, for a
detection or segmentation neck (timm's ``features_only=True``).

A level is the output of a stem or a stage, taken after the stage's BAM: for the ImageNet
ResNets, the stem (stride 2) and ``bam1``, ``bam2``, ``bam3``, ``layer4`` (strides 4 to 32).
:class:`FeatureNet` keeps the network's modules under their own names, so a state_dict of the
network (less its classifier) loads into it, and runs them in the network's order.
"""

from collections.abc import Sequence
from typing import List  # noqa: UP035 (TorchScript reads List[Tensor])

import torch
from torch import Tensor, nn

from ..errors import UsageError

__all__ = ["FeatureGetterNet", "FeatureInfo", "FeatureNet"]


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


def _levels(model: nn.Module, out_indices, owner: str) -> tuple[list, tuple[int, ...]]:
    """``model``'s feature levels and the checked ``out_indices`` (a UsageError naming
    ``owner`` for a network without levels)."""
    levels = getattr(model, "feature_levels", None)
    if levels is None:
        raise UsageError(
            f"{owner}: {type(model).__name__} has no feature levels; it takes the "
            f"networks of torch_bam.list_models()."
        )
    return levels, check_out_indices(f"features_only for {type(model).__name__}", out_indices,
                                     len(levels))


def _take_cfg(net: nn.Module, model: nn.Module) -> None:
    """As timm: a feature net keeps the configuration, less what belongs to the classifier."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None:
        cfg = {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier")}
        net.pretrained_cfg = net.default_cfg = cfg


class FeatureNet(nn.ModuleDict):
    """The feature maps of ``model`` at ``out_indices`` (a list of tensors, shallow first).

    Args:
        model: a registered torch-bam network (it has ``feature_levels`` and
            ``feature_info``); its modules are taken over, the classifier is left out.
        out_indices: which levels; default all of them (``len(model.feature_info)``).

    Attributes:
        feature_info: :class:`FeatureInfo` of the returned levels.

    As timm's ``FeatureListNet``, it is a ``ModuleDict`` of the modules the levels name, in
    the order they run, so that ``torch.jit.script`` compiles it. A nested name becomes a flat
    entry as in timm (``stages.0`` -> ``stages_0``) and a module that runs in two levels
    (``bam_small_cnn``'s one ``pool``) gets an entry per run (``pool``, ``pool_1``); the
    state_dict keeps the network's keys, each once, so the network's state_dict (less its
    classifier) loads into it.
    """

    grad_checkpointing: bool

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels, self.out_indices = _levels(model, out_indices, "FeatureNet")
        groups: list[list[str]] = []
        self._names: dict[str, str] = {}  # entry -> the network's name, for the state_dict
        for names in levels[: max(self.out_indices) + 1]:
            groups.append([])
            for name in names:
                entry = name.replace(".", "_")
                runs = sum(1 for n in self._names.values() if n == name)
                entry = f"{entry}_{runs}" if runs else entry
                self.add_module(entry, model.get_submodule(name))
                self._names[entry] = name
                groups[-1].append(entry)
        self._groups = groups
        self._take = [groups[i][-1] for i in self.out_indices]
        self.grad_checkpointing = False
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)
        _take_cfg(self, model)
        if any(e != n for e, n in self._names.items()):
            self.register_state_dict_post_hook(_network_keys)
            self.register_load_state_dict_pre_hook(_entry_keys)
            self.register_load_state_dict_post_hook(_named_as_network)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each level in backward instead of keeping its activations (timm's API)."""
        self.grad_checkpointing = bool(enable)

    def forward(self, x: Tensor) -> List[Tensor]:  # noqa: UP006 (TorchScript)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_checkpointed(x)
        features: List[Tensor] = []  # noqa: UP006
        for name, module in self.items():
            x = module(x)
            if name in self._take:
                features.append(x)
        return features

    @torch.jit.unused
    def _forward_checkpointed(self, x: Tensor) -> List[Tensor]:  # noqa: UP006
        from torch.utils.checkpoint import checkpoint

        from ._interface import _run_in_order

        features = []
        for i, group in enumerate(self._groups):
            modules = [self[e] for e in group]
            if torch.is_grad_enabled():
                x = checkpoint(_run_in_order, modules, x, use_reentrant=False)
            else:
                x = _run_in_order(modules, x)
            if i in self.out_indices:
                features.append(x)
        return features


def _network_keys(net: FeatureNet, state: dict, prefix: str, local_metadata) -> None:
    # Each entry's keys under the network's name, once: an entry that runs a module again
    # adds none.
    names: dict[str, str | None] = {}
    for entry, name in net._names.items():
        names[entry] = None if name in names.values() else name
    renamed = {}
    for key, value in state.items():
        head, _, rest = key[len(prefix) :].partition(".")
        if key.startswith(prefix) and head in names:
            if names[head] is None:
                continue
            key = f"{prefix}{names[head]}.{rest}"
        renamed[key] = value
    state.clear()
    state.update(renamed)


def _named_as_network(net: FeatureNet, incompatible) -> None:
    # A missing or unexpected key is named as the network (and the state_dict) name it. The
    # hook is not told the prefix: an entry is found at the start or after a dot.
    def network_key(key: str) -> str:
        for entry, name in net._names.items():
            if key.startswith(entry + "."):
                return name + key[len(entry) :]
            at = key.find("." + entry + ".") + 1
            if at:
                return key[:at] + name + key[at + len(entry) :]
        return key

    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = list(dict.fromkeys(network_key(k) for k in keys))


def _entry_keys(net: FeatureNet, state: dict, prefix: str, *args) -> None:
    # The network's keys to each entry's, every entry of a module that runs twice included.
    by_name: dict[str, list[str]] = {}
    for entry, name in net._names.items():
        by_name.setdefault(name, []).append(entry)
    for key in [k for k in state if k.startswith(prefix)]:
        for name, entries in by_name.items():
            if key.startswith(f"{prefix}{name}."):
                rest = key[len(f"{prefix}{name}.") :]
                value = state.pop(key)
                for entry in entries:
                    state[f"{prefix}{entry}.{rest}"] = value
                break


class FeatureGetterNet(nn.Module):
    """timm's ``feature_cls="getter"``: the maps of ``model.forward_intermediates`` at
    ``out_indices``, the levels after the last one pruned away (``prune_intermediate_layers``)
    and the classifier removed. The network sits under ``model`` (state_dict keys
    ``model.<name>``), as in timm's ``FeatureGetterNet``."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels, self.out_indices = _levels(model, out_indices, "FeatureGetterNet")
        model.prune_intermediate_layers(list(self.out_indices), prune_head=True)
        self.model = model
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)
        _take_cfg(self, model)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(
            x, indices=list(self.out_indices), intermediates_only=True
        )
