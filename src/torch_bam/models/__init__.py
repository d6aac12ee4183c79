"""The paper's networks and small ones for quick runs, registered by name."""

from . import _weights, cifar, mobilenet, resnet, small  # noqa: F401  (register them)
from ._cfg import list_pretrained
from ._hub import save_pretrained
from ._registry import create_model, list_models, register_model
from ._timm import install as _install_timm_hook

_install_timm_hook()  # timm.create_model("bam_resnet50") once timm is imported; lazy

__all__ = ["create_model", "list_models", "list_pretrained", "register_model", "save_pretrained"]
