"""Model registry: networks registered by name, built with ``create_model``."""

from collections.abc import Callable

from torch import nn

from ..errors import UsageError

__all__ = ["create_model", "list_models", "register_model", "register_pair"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name (``bam_resnet50``, ...)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"register_model: a model named {name!r} is already registered.")
    _MODELS[name] = fn
    return fn


def register_pair(
    cls: Callable[..., nn.Module], name: str, doc: str, num_classes: int = 1000, **model_args
) -> None:
    """Register ``name`` (baseline) and ``bam_<name>``: ``cls(use_bam=..., **model_args)``.

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
        register_model(build)


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


def _load_pretrained(model: nn.Module, cfg, num_classes, in_chans, file) -> nn.Module:
    """Load ``cfg``'s weights into ``model`` (``models/_pretrained.py``)."""
    from ._pretrained import load_pretrained

    return load_pretrained(model, cfg, num_classes=num_classes, in_chans=in_chans, file=file)


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    file: str | None = None,
    pretrained_cfg_overlay: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name: ``arch`` or ``arch.tag`` (``bam_resnet50.ptcv_in1k``).

    ``num_classes`` defaults to each model's own: 1000 for ImageNet networks, 100 for CIFAR
    ones, 10 for the small CNN. A tag selects a set of weights (:func:`list_pretrained`): the
    network is built as those weights need (their ``model_args``; ``kwargs`` override them),
    and ``pretrained=True`` loads them (the architecture's default tag if none is given),
    downloading them once into torch.hub's cache, or from ``file`` (a file you have).
    ``num_classes`` other than the weights' leaves the classifier new, for fine-tuning.
    """
    from ._cfg import get_pretrained_cfg, split_tag

    arch, tag = split_tag(name) if isinstance(name, str) else (name, "")
    if arch not in _MODELS:
        raise UsageError(
            f"create_model: unknown model {name!r}.{unknown_model_hint(str(name))} See "
            f"torch_bam.list_models() for all {len(_MODELS)} names."
        )
    cfg = get_pretrained_cfg(name, pretrained) if (tag or pretrained) else None
    if tag and cfg is None:
        from ._cfg import list_pretrained

        raise UsageError(
            f"create_model: {arch} has no weights tagged {tag!r}; tagged names: "
            f"{', '.join(list_pretrained(arch + '.*')) or 'none'}."
        )
    if pretrained and (cfg is None or not cfg.has_weights):
        from ._pretrained import no_pretrained_message

        raise UsageError(f"create_model({name!r}, pretrained=True): {no_pretrained_message(arch)}")
    if (file or pretrained_cfg_overlay) and not pretrained:
        raise UsageError(
            f"create_model({name!r}): file= and pretrained_cfg_overlay= describe weights to "
            f"load; pass pretrained=True with them."
        )
    if cfg is not None and pretrained_cfg_overlay:
        cfg = _overlay(cfg, pretrained_cfg_overlay)
    if cfg is not None:
        kwargs = {**cfg.model_args, **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = _MODELS[arch](**kwargs)
    if pretrained:
        _load_pretrained(model, cfg, num_classes, kwargs.get("in_chans"), file)
    return model


def _overlay(cfg, overlay: dict):
    """``cfg`` with ``overlay``'s fields (timm's ``pretrained_cfg_overlay``)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overlay) - fields)
    if unknown:
        raise UsageError(
            f"pretrained_cfg_overlay: unknown fields {unknown}; a configuration has "
            f"{', '.join(sorted(fields))}."
        )
    return cfg.replace(**overlay)
