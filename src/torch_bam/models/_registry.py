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
    "torch_bam ships no pretrained weights. The official code's ImageNet BAM-ResNet-50 "
    "checkpoint (github.com/Jongchan/attention-module) loads with "
    "torch_bam.compat.official_bam_resnet(50, checkpoint=torch.load(path, map_location='cpu', "
    "weights_only=True)); for a model you built with combine='product' and stride_in_3x3=True, "
    "use torch_bam.compat.load_official_checkpoint(model, checkpoint)."
)


def create_model(
    name: str, num_classes: int | None = None, pretrained: bool = False, **kwargs
) -> nn.Module:
    """Build a registered model by name.

    ``num_classes`` defaults to each model's own: 1000 for ImageNet networks, 100 for CIFAR
    ones, 10 for the small CNN. No pretrained weights ship: ``pretrained=True`` is an error
    that says how to load the official code's checkpoint (:mod:`torch_bam.compat`).
    """
    if name not in _MODELS:
        raise UsageError(
            f"create_model: unknown model {name!r}.{unknown_model_hint(name)} See "
            f"torch_bam.list_models() for all {len(_MODELS)} names."
        )
    if pretrained:
        raise UsageError(f"create_model({name!r}, pretrained=True): {NO_PRETRAINED}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _MODELS[name](**kwargs)
