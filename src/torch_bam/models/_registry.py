"""Model registry: networks registered by name, built with ``create_model``."""

from collections.abc import Callable

from torch import nn

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


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model by name.

    ``num_classes`` defaults to each model's own: 1000 for ImageNet networks, 100 for CIFAR
    ones, 10 for the small CNN.
    """
    if name not in _MODELS:
        from difflib import get_close_matches

        close = get_close_matches(name, list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"create_model: unknown model {name!r}.{hint} See torch_bam.list_models() for all "
            f"{len(_MODELS)} names."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _MODELS[name](**kwargs)
