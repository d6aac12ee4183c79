"""Register torch_bam's networks with timm, so that ``timm.create_model("bam_resnet50")`` works.

Only names timm does not have are registered, and none of timm's own is ever replaced: every
``bam_*`` network, and every baseline as ``torch_bam_<name>`` (timm's ``resnet50`` is
torchvision-style v1.5; ours is the paper's v1). timm is never imported by torch_bam itself:
if timm is already imported, registration happens at once, otherwise right after the program
imports it (an import hook), so ``import torch_bam`` stays as fast as importing torch.

Each network's configurations (the default one, and any tagged weights) go into timm's
registry too, through this module's ``default_cfgs`` (where timm's ``register_model`` looks),
so ``timm.list_models(pretrained=True)``, ``timm.models.get_pretrained_cfg`` and
``timm.data.resolve_data_config`` know them. Building goes through
:func:`torch_bam.create_model`, with timm's ``pretrained``, ``pretrained_cfg`` (a tag, as timm
passes it for ``"name.tag"``, or a whole configuration) and ``pretrained_cfg_overlay``
(e.g. ``dict(file=PATH)``).
"""

import importlib.abc
import importlib.util
import sys
import warnings

from ._cfg import _CFGS, _DEFAULT_TAG
from ._registry import _MODELS, _SOURCES, create_model

__all__ = ["install", "register_with_timm", "timm_name"]

_done = False
default_cfgs: dict = {}  # timm name -> timm DefaultCfg; read by timm's register_model


def timm_name(name: str) -> str:
    """The name a torch_bam model has in timm's registry."""
    return name if name.startswith("bam_") else f"torch_bam_{name}"


def _entrypoint(name: str):
    def build(
        pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs
    ):
        kwargs.pop("pretrained_model_args", None)  # timm's record of the folder's model_args
        source = pretrained_cfg.get("source") if isinstance(pretrained_cfg, dict) else None
        if source in _SOURCES:  # "local-dir:PATH" / "hf-hub:org/name", as torch_bam loads it
            ident = pretrained_cfg["file" if source == "local-dir" else "hf_hub_id"]
            return create_model(f"{source}:{ident}", pretrained=pretrained, **kwargs)
        return create_model(
            name,
            pretrained=pretrained,
            pretrained_cfg=pretrained_cfg,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
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
            default_cfgs[alias] = _timm_default_cfg(name)
            register_model(_entrypoint(name))
            added.append(alias)
    return added


def _timm_default_cfg(name: str):
    """timm's ``DefaultCfg`` for ``name``: its tagged weights, the default tag first, or the
    default (no weights) configuration if it has none."""
    import dataclasses
    from collections import deque

    from timm.models._pretrained import DefaultCfg, PretrainedCfg

    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}
    ours = _CFGS.get(name, {})
    tags = [t for t in ours if t]
    if tags:
        first = _DEFAULT_TAG.get(name, tags[0])
        tags = [first] + [t for t in tags if t != first]
    else:
        tags = [""]
    cfgs = {}
    for tag in tags:
        d = {k: v for k, v in ours[tag].to_dict().items() if k in fields}
        d.update(architecture=timm_name(name), url=d["url"] or None, file=d["file"] or None)
        cfgs[tag] = PretrainedCfg(**d)
    return DefaultCfg(tags=deque(tags), cfgs=cfgs)


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
