"""The torch-bam checkpoint: a model name plus weights, loadable without the training code.

Format (a ``torch.save`` dict)::

    {"format": "torch-bam/1", "model": "bam_small_cnn", "num_classes": 10, "in_chans": 1,
     "image_size": 48, "mean": [...], "std": [...], "state_dict": {...}, "extra": {...}}

``load_checkpoint`` also reads a Lightning ``.ckpt`` whose ``hyper_parameters`` name the model
(``model`` or ``model_name``) and whose ``state_dict`` keys carry a ``model.`` prefix.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from torch import nn

FORMAT = "torch-bam/1"


def save_checkpoint(path: str, model_name: str, model: nn.Module, **meta: Any) -> None:
    """Write ``model`` in the torch-bam format; written to a temp file first, then renamed."""
    payload = {"format": FORMAT, "model": model_name, **meta, "state_dict": model.state_dict()}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint names, load its weights, return ``(model.eval(), meta)``."""
    from ..models import create_model

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"load_checkpoint: {path} is not a torch-bam or Lightning checkpoint (no "
            f"'state_dict'). Save one with torch_bam.viz.save_checkpoint or Lightning's Trainer."
        )
    if "hyper_parameters" in ckpt:  # Lightning
        meta = dict(ckpt["hyper_parameters"])
        name = meta.get("model", meta.get("model_name"))
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    else:
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        name = meta.get("model")
        state = ckpt["state_dict"]
    if not isinstance(name, str):
        raise ValueError(
            f"load_checkpoint: {path} does not name its model (hyper-parameter 'model' or "
            f"'model_name'). Save it with the model name from torch_bam.list_models()."
        )
    kwargs = {"num_classes": int(meta.get("num_classes", 1000))}
    if "in_chans" in meta:
        kwargs["in_chans"] = int(meta["in_chans"])
    model = create_model(name, **kwargs)
    model.load_state_dict(state)
    return model.eval(), meta
