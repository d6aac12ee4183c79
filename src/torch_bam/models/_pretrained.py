"""Load a tagged configuration's weights into a network built for them.

The file comes from the user (``file=``), or from torch.hub's cache (downloaded and checked by
:mod:`._download`). It is read with ``torch.load(weights_only=True)``, its keys are converted
(pytorchcv's or the official code's names to torch_bam's), the network's layout is checked
against the one the weights need, and it is loaded strictly, except, as timm does it:

- a classifier of another size (``num_classes`` other than the weights') is left new, and a
  warning says so (fine-tuning); with ``num_classes=0`` (no classifier: a backbone) the
  weights' classifier is left out;
- a first conv with other input channels (``in_chans``) gets the weights' filters summed
  (one channel) or repeated and rescaled (more channels), and a log line says so.
"""

from __future__ import annotations

import io
import logging
import math
import os
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ._cfg import PretrainedCfg, list_pretrained
from ._download import cache_path, check_hash, fetch

__all__ = ["adapt_input_conv", "load_pretrained", "no_pretrained_message", "read_weights"]

_logger = logging.getLogger(__name__)


def no_pretrained_message(arch: str) -> str:
    """Why ``pretrained=True`` fails for ``arch``, and what there is instead."""
    return (
        f"{arch} has no pretrained weights in torch_bam. Weights exist for: "
        f"{', '.join(list_pretrained()) or 'none'} (torch_bam.list_pretrained()). The official "
        f"code's checkpoints load with torch_bam.compat.official_bam_resnet(depth, "
        f"checkpoint=torch.load(path, map_location='cpu', weights_only=True)); into a network "
        f"you built (combine='product', stride_in_3x3=True), use "
        f"torch_bam.compat.load_official_checkpoint(model, checkpoint)."
    )


def adapt_input_conv(in_chans: int, weight: Tensor, base_chans: int = 3) -> Tensor:
    """First-conv weights for ``in_chans`` input channels from weights for ``base_chans``.

    timm's rule (``timm.models.adapt_input_conv``): one channel sums the filters over the
    input channels (a grey image gives what its RGB copy gave); more channels repeat them and
    scale by ``base_chans / in_chans``, so the conv's output keeps its magnitude.
    """
    if in_chans < 1:
        raise UsageError(f"in_chans must be at least 1, got {in_chans}.")
    if in_chans == base_chans:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        repeat = math.ceil(in_chans / base_chans)
        w = w.repeat(1, repeat, 1, 1)[:, :in_chans] * (base_chans / in_chans)
    return w.to(weight.dtype)


def _is_archive(path: Path) -> bool:
    """A zip holding a weight file (pytorchcv's ``.pth.zip``), not torch's own zip format
    (whose members are ``<name>/data.pkl``, ``<name>/data/0``, ...)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return not any(n.endswith("data.pkl") for n in zf.namelist())


def read_weights(path: str | os.PathLike, cfg: PretrainedCfg):
    """``torch.load(path, weights_only=True)``, unzipping pytorchcv's archive first; every
    failure one line naming the file."""
    from .._io import load_weights_only

    path = Path(path)
    fix = f"Pass the weight file of {cfg.name} ({cfg.filename or cfg.url})."
    if path.is_file() and _is_archive(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                data = zf.read(names[0]) if len(names) == 1 else None
            if data is None:
                raise UsageError(f"{path} holds {len(names)} files; expected one weight file.")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except UsageError:
            raise
        except Exception as e:
            reason = type(e).__name__
            raise UsageError(f"cannot read weights from {path} ({reason}). {fix}") from None
    return load_weights_only(path, fix)


def _convert(state_dict, cfg: PretrainedCfg) -> dict[str, Tensor]:
    from .._convert import _state_dict_of, convert_official_state_dict, convert_pytorchcv_state_dict

    if cfg.converter == "pytorchcv":
        return convert_pytorchcv_state_dict(state_dict)
    if cfg.converter == "official":
        return convert_official_state_dict(_state_dict_of(state_dict))
    if cfg.converter == "":
        return dict(_state_dict_of(state_dict))
    raise UsageError(f"{cfg.name}: unknown converter {cfg.converter!r} in its configuration.")


def _resolve_file(cfg: PretrainedCfg, file, progress: bool) -> Path:
    file = file or cfg.file
    if not file:
        return fetch(cfg, progress=progress)
    path = Path(os.path.expanduser(os.fspath(file)))
    if not path.is_file():
        raise UsageError(
            f"{cfg.name}: no such weight file: {path}. Pass the path of {cfg.filename or 'it'} "
            f"as file=PATH, or place it at {cache_path(cfg)}."
        )
    if not _is_archive(path):
        wrong = check_hash(cfg, path)
        if wrong:
            _logger.warning(
                "%s: %s has SHA-1 %s, not the published weights' %s; loading it anyway.",
                cfg.name,
                path,
                wrong,
                cfg.hash_sha1,
            )
    return path


def load_pretrained(
    model: nn.Module,
    cfg: PretrainedCfg | None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    file: str | os.PathLike | None = None,
    progress: bool = True,
) -> nn.Module:
    """Load ``cfg``'s weights into ``model`` (built with ``cfg.model_args``); return it.

    ``file`` (or ``cfg.file``) is a weight file the user has; otherwise the file comes from
    the cache, downloaded once from ``cfg.url``. ``num_classes`` and ``in_chans`` default to
    the model's own (its classifier's outputs, its first conv's inputs).
    """
    from .._convert import check_official_layout, load_state_dict_strict

    if cfg is None or not cfg.has_weights:
        arch = cfg.architecture if cfg is not None else type(model).__name__
        raise UsageError(no_pretrained_message(arch))
    path = _resolve_file(cfg, file, progress)
    source = f"{cfg.name} ({path})"
    state_dict = _convert(read_weights(path, cfg), cfg)
    if cfg.converter in ("pytorchcv", "official"):
        check_official_layout(model, state_dict, source)

    new: list[str] = []
    if cfg.first_conv:
        conv = model.get_submodule(cfg.first_conv)
        key = f"{cfg.first_conv}.weight"
        chans = conv.in_channels if in_chans is None else in_chans
        weight = state_dict.get(key)
        if isinstance(weight, Tensor) and weight.ndim == 4 and weight.shape[1] != chans:
            state_dict[key] = adapt_input_conv(chans, weight, base_chans=weight.shape[1])
            _logger.info(
                "%s: %s adapted from %d to %d input channels.",
                cfg.name,
                cfg.first_conv,
                weight.shape[1],
                chans,
            )
    if cfg.classifier:
        head = model.get_submodule(cfg.classifier)
        classes = getattr(head, "out_features", None) if num_classes is None else num_classes
        prefix = f"{cfg.classifier}."
        if classes == 0:  # timm's headless backbone: the weights' classifier is not needed
            for k in [k for k in state_dict if k.startswith(prefix)]:
                del state_dict[k]
        elif classes != cfg.num_classes:
            new = [k for k in model.state_dict() if k.startswith(prefix)]
            for k in new:
                state_dict.pop(k, None)
            _logger.warning(
                "%s: loaded all weights but the classifier %s, which is new (%s classes; the "
                "weights have %d): train it before use.",
                cfg.name,
                cfg.classifier,
                classes,
                cfg.num_classes,
            )
    load_state_dict_strict(model, state_dict, source, new=new)
    return model
