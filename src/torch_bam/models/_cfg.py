"""Pretrained configurations: one object per network (and per set of weights), the way timm
describes its models.

Every registered network has a *default* configuration (tag ``""``): the preprocessing it
expects (input size, mean, std, crop, interpolation), its first conv and its classifier, and
no weights. A set of published weights adds a *tagged* configuration
(``bam_resnet50.ptcv_in1k``) with where the weights come from, their hash, licence and
published accuracy, and the model arguments the weights were trained with.

Field names follow timm's ``PretrainedCfg`` (``timm.models._pretrained``), so that
:meth:`PretrainedCfg.to_dict` is what a timm model carries as ``model.pretrained_cfg`` and
``timm.data.resolve_data_config`` reads. torch-bam's own fields come after timm's. The core
never imports timm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PretrainedCfg",
    "get_pretrained_cfg",
    "list_pretrained",
    "register_pretrained_cfg",
    "split_tag",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    # --- timm's fields (same names, same meaning) ---
    architecture: str = ""  # the registered model name, without tag
    tag: str = ""  # "" for the default (no weights) configuration
    url: str = ""  # where the weights are downloaded from ("" if the user supplies a file)
    file: str = ""  # a local file with the weights (timm: pretrained_cfg_overlay=dict(file=...))
    input_size: tuple[int, int, int] = (3, 224, 224)
    fixed_input_size: bool = False
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    pool_size: tuple[int, int] | None = (7, 7)
    first_conv: str = ""  # name of the first conv module (timm uses it to adapt in_chans)
    classifier: str = ""  # name of the classifier module (reset_classifier, fine-tuning)
    license: str = ""
    description: str = ""
    origin_url: str = ""  # the page the weights are published on
    paper_ids: str = ""  # e.g. "arXiv:1807.06514"
    paper_name: str = ""
    notes: tuple[str, ...] = ()
    # --- torch-bam's own fields ---
    hash_sha1: str = ""  # full SHA-1 of the weight file (pytorchcv checks the unzipped .pth)
    hash_sha256: str = ""
    archive: str = ""  # "zip" when the download is a zip holding the weight file
    converter: str = ""  # how to map the file's keys to ours: "", "official", "pytorchcv"
    model_args: dict[str, Any] = field(default_factory=dict)  # flags the weights need
    published_top1: float | None = None  # accuracy as published by the weights' authors (%)
    published_top5: float | None = None
    filename: str = ""  # the weight file's name in the cache (where a user may place it by hand)

    @property
    def name(self) -> str:
        """``architecture.tag``, or the architecture alone for the default configuration."""
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def has_weights(self) -> bool:
        """A tagged configuration describes weights (downloadable from ``url``, or a file the
        user places by hand); the default one describes none."""
        return bool(self.tag)

    def replace(self, **changes) -> PretrainedCfg:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict, as timm models carry ``pretrained_cfg`` / ``default_cfg``."""
        d = dataclasses.asdict(self)
        d["model_args"] = dict(self.model_args)
        return d


# architecture -> tag -> configuration; the first tag registered is the default that
# ``pretrained=True`` loads (as timm: the first tag listed for an architecture).
_CFGS: dict[str, dict[str, PretrainedCfg]] = {}
_DEFAULT_TAG: dict[str, str] = {}


def split_tag(name: str) -> tuple[str, str]:
    """``"bam_resnet50.ptcv_in1k"`` -> ``("bam_resnet50", "ptcv_in1k")``; no tag -> ``""``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def register_pretrained_cfg(cfg: PretrainedCfg, default: bool = False) -> PretrainedCfg:
    """Add ``cfg`` under ``cfg.architecture`` and ``cfg.tag``. A tagged configuration becomes
    the architecture's default tag if it is the first, or with ``default=True``."""
    if not cfg.architecture:
        raise ValueError("register_pretrained_cfg: cfg.architecture is empty.")
    tags = _CFGS.setdefault(cfg.architecture, {})
    if cfg.tag in tags:
        raise ValueError(f"register_pretrained_cfg: {cfg.name!r} is already registered.")
    tags[cfg.tag] = cfg
    if cfg.tag and (default or cfg.architecture not in _DEFAULT_TAG):
        _DEFAULT_TAG[cfg.architecture] = cfg.tag
    return cfg


def get_pretrained_cfg(name: str, pretrained: bool = False) -> PretrainedCfg | None:
    """The configuration for ``name`` (``arch`` or ``arch.tag``), or None if there is none.

    Without a tag: the default weights' configuration if ``pretrained``, else the
    architecture's default (no weights) configuration.
    """
    arch, tag = split_tag(name)
    tags = _CFGS.get(arch)
    if tags is None:
        return None
    if not tag and pretrained:
        tag = _DEFAULT_TAG.get(arch, "")
    return tags.get(tag)


def list_pretrained(pattern: str = "*") -> list[str]:
    """Names ``arch.tag`` of every configuration with weights that matches ``pattern``."""
    from fnmatch import fnmatch

    return sorted(
        cfg.name
        for tags in _CFGS.values()
        for cfg in tags.values()
        if cfg.has_weights and fnmatch(cfg.name, pattern)
    )
