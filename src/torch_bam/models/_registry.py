"""Model registry: networks registered by name, built with ``create_model``."""

from collections.abc import Callable

from torch import nn

__all__ = ["create_model", "list_models", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name (``bam_resnet50``, ...)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"register_model: a model named {name!r} is already registered.")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    from fnmatch import fnmatch

    return sorted(n for n in _MODELS if fnmatch(n, pattern))


def create_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build a registered model by name."""
    if name not in _MODELS:
        from difflib import get_close_matches

        close = get_close_matches(name, list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"create_model: unknown model {name!r}.{hint} See torch_bam.list_models() for all "
            f"{len(_MODELS)} names."
        )
    return _MODELS[name](num_classes=num_classes, **kwargs)
