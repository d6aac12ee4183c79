"""Model registry: networks registered by name, built with ``create_model``.

Each name has a default configuration (:class:`~torch_bam.models._cfg.PretrainedCfg`, tag
``""``): the input it expects, its first conv and classifier. ``create_model`` builds the
network, attaches that configuration as ``model.pretrained_cfg`` (timm's attribute), loads
weights if asked (:func:`_load_pretrained`, the one place weights come in), and wraps it for
``features_only``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..errors import UsageError
from ._cfg import PretrainedCfg, get_pretrained_cfg, register_pretrained_cfg, split_tag

__all__ = ["create_model", "list_models", "register_model", "register_pair"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# "local-dir" / "hf-hub" -> the loader of such names (models/_hub.py registers itself).
_SOURCES: dict[str, Callable[..., nn.Module]] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None, **cfg: Any
) -> Callable[..., nn.Module]:
    """Register a builder under its function name (``bam_resnet50``, ...), with its default
    configuration: ``cfg`` holds :class:`PretrainedCfg` fields (``input_size``, ``mean``,
    ``classifier``, ...). Use as ``@register_model`` or ``@register_model(input_size=...)``."""

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"register_model: a model named {name!r} is already registered.")
        _MODELS[name] = fn
        if get_pretrained_cfg(name) is None:
            register_pretrained_cfg(PretrainedCfg(architecture=name, **cfg))
        return fn

    return register if fn is None else register(fn)


def register_pair(
    cls: Callable[..., nn.Module],
    name: str,
    doc: str,
    num_classes: int = 1000,
    cfg: dict[str, Any] | None = None,
    **model_args,
) -> None:
    """Register ``name`` (baseline) and ``bam_<name>``: ``cls(use_bam=..., **model_args)``,
    both with the default configuration ``cfg`` (:class:`PretrainedCfg` fields).

    Keyword arguments given to ``create_model`` override ``model_args``; for the BAM version,
    those that ``cls`` does not take go to BAM (``reduction_ratio``, ``combine``, ...).
    """
    default_classes = num_classes

    for prefix, use_bam in (("", False), ("bam_", True)):

        def build(num_classes: int = default_classes, _use_bam=use_bam, **kwargs) -> nn.Module:
            return cls(num_classes=num_classes, use_bam=_use_bam, **dict(model_args, **kwargs))

        build.__name__ = build.__qualname__ = prefix + name
        build.__doc__ = ("BAM-" if use_bam else "") + doc
        build.__module__ = cls.__module__
        register_model(build, num_classes=num_classes, **(cfg or {}))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    from fnmatch import fnmatch

    return sorted(n for n in _MODELS if fnmatch(n, pattern))


def unknown_model_hint(name: str) -> str:
    """ " Did you mean 'x', 'y'?" for a name that is not registered ("" if nothing is close)."""
    from difflib import get_close_matches

    close = get_close_matches(name, list(_MODELS), n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


NO_PRETRAINED = (
    "Weights exist only for the names torch_bam.list_pretrained() lists. The official code's "
    "checkpoints load with torch_bam.compat.official_bam_resnet(depth, checkpoint=torch.load(path, "
    "map_location='cpu', weights_only=True)); for a model you built with combine='product' and "
    "stride_in_3x3=True, use torch_bam.compat.load_official_checkpoint(model, checkpoint)."
)


def _load_pretrained(
    model: nn.Module, cfg: PretrainedCfg, num_classes: int, in_chans: int, file: str | None
) -> None:
    """Load the weights ``cfg`` describes (or ``file``) into ``model``, adapting the classifier
    to ``num_classes`` and the first conv to ``in_chans``. The one place weights come in
    (``models/_pretrained.py``)."""
    if not cfg.has_weights:
        from ._pretrained import no_pretrained_message

        why = no_pretrained_message(cfg.architecture)
        raise UsageError(f"create_model({cfg.name!r}, pretrained=True): {why}")
    from ._pretrained import load_pretrained

    load_pretrained(model, cfg, num_classes=num_classes, in_chans=in_chans, file=file)


def _check_name(name: object) -> tuple[str, str]:
    if not isinstance(name, str):
        raise UsageError(
            f"create_model: the model name must be a string such as 'bam_resnet50', got "
            f"{name!r} ({type(name).__name__}). See torch_bam.list_models() for the names."
        )
    arch, tag = split_tag(name)
    if arch not in _MODELS:
        raise UsageError(
            f"create_model: unknown model {name!r}.{unknown_model_hint(arch)} See "
            f"torch_bam.list_models() for all {len(_MODELS)} names."
        )
    return arch, tag


def _check_count(owner: str, what: str, value: object, least: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UsageError(f"{owner}: {what} must be an integer >= {least}, got {value!r}. {hint}")


def resolve_cfg(
    name: str,
    pretrained: bool = False,
    pretrained_cfg: PretrainedCfg | dict | str | None = None,
    pretrained_cfg_overlay: dict | None = None,
) -> tuple[str, PretrainedCfg]:
    """``(architecture, configuration)`` for ``name``, as timm resolves them: a tag in the
    name or in ``pretrained_cfg`` (a tag string), or a whole configuration (object or dict),
    then ``pretrained_cfg_overlay`` on top (e.g. ``dict(file=PATH)``)."""
    arch, tag = _check_name(name)
    if isinstance(pretrained_cfg, str):
        tag = tag or pretrained_cfg
        pretrained_cfg = None
    if isinstance(pretrained_cfg, PretrainedCfg):
        cfg = pretrained_cfg
    elif (
        pretrained_cfg is None
        or isinstance(pretrained_cfg, dict)
        or hasattr(pretrained_cfg, "to_dict")
    ):
        given = {}
        if pretrained_cfg is not None:  # timm's object or a dict: over our configuration
            given = pretrained_cfg if isinstance(pretrained_cfg, dict) else pretrained_cfg.to_dict()
            tag = tag or (given.get("tag") or "")
        full = f"{arch}.{tag}" if tag else arch
        cfg = get_pretrained_cfg(full, pretrained)
        if cfg is None:
            from ._cfg import list_pretrained

            known = ", ".join(list_pretrained(f"{arch}.*")) or "none"
            raise UsageError(
                f"create_model: {arch!r} has no configuration tagged {tag!r}. Its tagged "
                f"weights: {known}."
            )
        if given:
            cfg = _cfg_from_dict({**cfg.to_dict(), **given, "architecture": arch})
    else:
        raise UsageError(
            f"create_model: pretrained_cfg must be a tag, a dict or a PretrainedCfg, got "
            f"{type(pretrained_cfg).__name__}."
        )
    if pretrained_cfg_overlay:
        import dataclasses

        fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
        unknown = sorted(set(pretrained_cfg_overlay) - fields)
        if unknown:
            raise UsageError(
                f"pretrained_cfg_overlay: unknown fields {unknown}; a configuration has "
                f"{', '.join(sorted(fields))}."
            )
        cfg = _cfg_from_dict({**cfg.to_dict(), **pretrained_cfg_overlay})
    return arch, cfg


def _cfg_from_dict(d: dict) -> PretrainedCfg:
    """A configuration from a dict (timm's fields and ours; others are dropped)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    known = {k: v for k, v in d.items() if k in fields and v is not None}
    for key in ("input_size", "mean", "std", "pool_size", "notes"):
        if isinstance(known.get(key), list):
            known[key] = tuple(known[key])
    return PretrainedCfg(**known)


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    file: str | None = None,
    pretrained_cfg: PretrainedCfg | dict | str | None = None,
    pretrained_cfg_overlay: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name, as ``timm.create_model`` does.

    Args:
        name: a registered name (:func:`list_models`), optionally with a weights tag
            (``"bam_resnet50.official_in1k"``); or ``"local-dir:PATH"`` / ``"hf-hub:org/name"``,
            a folder :func:`~torch_bam.save_pretrained` wrote (weights with ``pretrained=True``).
        num_classes: outputs of the classifier; default each model's own (1000 for ImageNet
            networks, 100 for CIFAR ones, 10 for the small CNN); 0 for none (the model then
            returns pooled features).
        pretrained: load the weights of the configuration (the name's tag, or the default
            tag of the architecture).
        features_only: return a :class:`~torch_bam.models.FeatureNet`: the feature maps at
            ``out_indices`` (default: every level), with ``feature_info``;
            ``feature_cls="getter"`` (timm's) a ``FeatureGetterNet`` instead, through
            ``forward_intermediates``.
        file: a local weights file, for ``pretrained=True``.
        pretrained_cfg, pretrained_cfg_overlay: timm's: a tag or whole configuration, and
            fields to change in it.
        **kwargs: the network's arguments (``in_chans``, ``drop_rate``, ``global_pool``,
            ``stride_in_3x3``, ...) or BAM's (``reduction_ratio``, ``combine``, ...).

    The model carries its configuration as ``model.pretrained_cfg`` (and ``default_cfg``).
    """
    source, sep, ident = name.partition(":") if isinstance(name, str) else ("", "", "")
    if sep and source in _SOURCES:  # a folder or Hub repository (models/_hub.py)
        return _SOURCES[source](
            source,
            ident,
            pretrained=pretrained,
            num_classes=num_classes,
            features_only=features_only,
            out_indices=out_indices,
            **kwargs,
        )
    if file and not pretrained:
        raise UsageError(
            f"create_model({name!r}, file=...): file= names weights to load; pass "
            f"pretrained=True with it."
        )
    arch, cfg = resolve_cfg(name, pretrained, pretrained_cfg, pretrained_cfg_overlay)
    kwargs_feature_cls = kwargs.pop("feature_cls", None)  # timm's: "list" or "getter"
    if num_classes is None:
        num_classes = kwargs.pop("num_classes", None)
    owner = f"create_model({name!r})"
    num_classes = cfg.num_classes if num_classes is None else num_classes
    _check_count(owner, "num_classes", num_classes, 0, "Use num_classes=0 for no classifier.")
    in_chans = kwargs.get("in_chans", 3)
    _check_count(owner, "in_chans", in_chans, 1, "Use the image's channels, e.g. in_chans=3.")
    args = {**cfg.model_args, **kwargs, "num_classes": num_classes}
    model = _MODELS[arch](**args)
    model.pretrained_cfg = model.default_cfg = cfg.to_dict()
    model._model_args = {k: v for k, v in args.items() if k != "num_classes"}  # save_pretrained
    if pretrained:
        _load_pretrained(model, cfg, num_classes, in_chans, file or cfg.file or None)
    feature_cls = kwargs_feature_cls
    if features_only:
        from ._features import FeatureGetterNet, FeatureNet

        if feature_cls not in (None, "list", "getter"):
            raise UsageError(
                f"{owner}: feature_cls must be 'list' (the maps as the network runs them) or "
                f"'getter' (through forward_intermediates), got {feature_cls!r}."
            )
        model = (FeatureGetterNet if feature_cls == "getter" else FeatureNet)(model, out_indices)
    elif out_indices is not None:
        raise UsageError(f"{owner}: out_indices is for features_only=True; pass that too.")
    return model
