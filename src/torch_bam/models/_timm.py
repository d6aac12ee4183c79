"""Register torch_bam's networks with timm, so that ``timm.create_model("bam_resnet50")`` works.

Only names timm does not have are registered, and none of timm's own is ever replaced: every
``bam_*`` network, and every baseline as ``torch_bam_<name>`` (timm's ``resnet50`` is
torchvision-style v1.5; ours is the paper's v1). timm is never imported by torch_bam itself:
if timm is already imported, registration happens at once, otherwise right after the program
imports it (an import hook), so ``import torch_bam`` stays as fast as importing torch.
"""

import importlib.abc
import importlib.util
import sys
import warnings

from ._registry import _MODELS, create_model

__all__ = ["install", "register_with_timm", "timm_name"]

_done = False


def timm_name(name: str) -> str:
    """The name a torch_bam model has in timm's registry."""
    return name if name.startswith("bam_") else f"torch_bam_{name}"


def _entrypoint(name: str):
    def build(
        pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs
    ):
        # timm hands the tag of "bam_resnet50.ptcv_in1k" over as pretrained_cfg.
        if isinstance(pretrained_cfg, str):
            tag = pretrained_cfg
        elif isinstance(pretrained_cfg, dict):
            tag = pretrained_cfg.get("tag") or ""
        else:
            tag = getattr(pretrained_cfg, "tag", None) or ""
        return create_model(
            f"{name}.{tag}" if tag else name,
            pretrained=pretrained,
            pretrained_cfg_overlay=pretrained_cfg_overlay if pretrained else None,
            **kwargs,
        )

    build.__name__ = build.__qualname__ = timm_name(name)
    build.__module__ = __name__
    build.__doc__ = _MODELS[name].__doc__
    return build


def register_with_timm() -> list[str]:
    """Register every torch_bam model timm lacks; return the names registered."""
    global _done
    if _done:
        return []
    _done = True
    from timm.models import is_model, register_model

    added = []
    for name in sorted(_MODELS):
        alias = timm_name(name)
        if not is_model(alias):
            register_model(_entrypoint(name))
            added.append(alias)
    return added


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Run :func:`register_with_timm` once the ``timm`` package has been executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                register_with_timm()
            except Exception as err:  # never break the user's import of timm
                warnings.warn(
                    f"torch_bam could not register its models with timm: {err}", stacklevel=2
                )

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register now if timm is imported, else when it is; nothing if timm is not installed."""
    if "timm" in sys.modules:
        register_with_timm()
    elif importlib.util.find_spec("timm") is not None:
        if not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterTimmImport())
