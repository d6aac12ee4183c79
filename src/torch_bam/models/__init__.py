"""The paper's networks and small ones for quick runs, registered by name."""

from . import cifar, mobilenet, resnet, small  # noqa: F401  (register their models)
from ._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
