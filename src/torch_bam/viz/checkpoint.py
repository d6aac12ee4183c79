"""The torch-bam checkpoint: a model name plus weights, loadable without the training code.

Format (a ``torch.save`` dict)::

    {"format": "torch-bam/1", "model": "bam_small_cnn", "num_classes": 10, "in_chans": 1,
     "image_size": 48, "resize_size": 48, "interpolation": "bilinear", "mean": [...],
     "std": [...], "dataset": "cluttered-digits", "state_dict": {...}, "extra": {...}}

The preprocessing its model was trained with: the image's shorter side resized to
``resize_size`` (``interpolation``; default ``image_size``), centre-cropped to ``image_size``,
scaled to [0, 1], then ``(x - mean) / std`` per channel.

``load_checkpoint`` also reads a Lightning ``.ckpt`` whose ``hyper_parameters`` name the model
(``model`` or ``model_name``) and whose ``state_dict`` keys carry a ``model.`` prefix, as
``torch-bam fit`` writes them; ``fit`` records the same preprocessing keys under
``"preprocessing"`` (from its data module).

Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain Python
values only, so a file cannot run code when it is opened. One that holds anything else is
refused with an error that names the object. Bad files and bad settings raise
:class:`~torch_bam.errors.UsageError` (a ``ValueError``) naming the cause and the fix.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._io import atomic_write, load_weights_only, unsafe_global
from ..errors import UsageError

FORMAT = "torch-bam/1"

__all__ = [
    "FORMAT",
    "Preprocessing",
    "input_settings",
    "load_checkpoint",
    "preprocessing",
    "read_checkpoint",
    "save_checkpoint",
]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def save_checkpoint(path: str, model_name: str, model: nn.Module, **meta: Any) -> None:
    """Write ``model`` in the torch-bam format, whole or not at all (``atomic_write``).

    ``meta`` holds ``num_classes``, ``in_chans`` and the preprocessing (``image_size``,
    ``resize_size``, ``interpolation``, ``mean``, ``std``, ``dataset``; checked as
    :func:`preprocessing` checks them) and any ``extra`` plain values. A value that
    ``torch.load(weights_only=True)`` could not read back (a NumPy scalar, an object) is refused
    here, before anything is written.
    """
    payload = {"format": FORMAT, "model": model_name, **meta, "state_dict": model.state_dict()}
    input_settings(meta, "save_checkpoint: the checkpoint")
    _resizing(meta, "save_checkpoint: the checkpoint")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"save_checkpoint: {unsafe_global(e) or 'a value'} in the metadata could not be "
            f"read back with torch.load(weights_only=True). Pass only tensors and plain Python "
            f"values (int, float, str, list, dict), e.g. float(x) for a NumPy number."
        ) from None
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def read_checkpoint(path: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, every failure a one-line :class:`UsageError`."""
    ckpt = load_weights_only(path, "Pass the .ckpt or .pt file training wrote.")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(
            f"{path} is not a torch-bam or Lightning checkpoint (no 'state_dict'). Save one with "
            f"torch_bam.viz.save_checkpoint or train with torch-bam fit."
        )
    return ckpt


def _positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where} has {name}={value!r}; it must be a whole number >= 1.")
    return value


def _floats(value: Any, name: str, where: str, in_chans: int) -> list[float]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise UsageError(f"{where} has {name}={value!r}; it must be a list of numbers.")
    values = [float(v) for v in value]
    if len(values) != in_chans:
        raise UsageError(
            f"{where} has {name}={values} for {in_chans} input channel"
            f"{'s' if in_chans > 1 else ''}; it needs one value per channel."
        )
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{where} has {name}={values}; every value must be finite.")
    return values


def input_settings(
    meta: Mapping[str, Any], where: str
) -> tuple[int, int, list[float], list[float]]:
    """``(in_chans, image_size, mean, std)`` from checkpoint metadata, checked.

    Defaults: 3 channels, 224 pixels, mean and std 0.5. A std of 0 would divide the image by
    zero (NaN input), so every std must be > 0.
    """
    in_chans = _positive_int(meta.get("in_chans", 3), "in_chans", where)
    size = _positive_int(meta.get("image_size", 224), "image_size", where)
    mean = _floats(meta.get("mean", [0.5] * in_chans), "mean", where, in_chans)
    std = _floats(meta.get("std", [0.5] * in_chans), "std", where, in_chans)
    if any(s <= 0 for s in std):
        raise UsageError(
            f"{where} has std={std}; the image is divided by it, so every value must be > 0 "
            f"(0 gives NaN input). Save the checkpoint with the std its training data used."
        )
    return in_chans, size, mean, std


def _resizing(meta: Mapping[str, Any], where: str) -> tuple[int | None, str]:
    size = meta.get("image_size")
    resize = meta.get("resize_size")
    if resize is not None:
        resize = _positive_int(resize, "resize_size", where)
        if isinstance(size, int) and resize < size:
            raise UsageError(
                f"{where} has resize_size={resize} < image_size={size}: the centre crop would "
                f"be larger than the resized image. Record a resize_size >= image_size."
            )
    interpolation = meta.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise UsageError(
            f"{where} has interpolation={interpolation!r}; it must be one of "
            f"{', '.join(INTERPOLATIONS)}."
        )
    return resize, interpolation


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint's model saw its images (see the module docstring)."""

    in_chans: int
    image_size: int
    resize_size: int
    interpolation: str
    mean: list[float]
    std: list[float]
    dataset: str | None = None


def preprocessing(meta: Mapping[str, Any], where: str) -> Preprocessing:
    """The preprocessing a checkpoint records, checked; a :class:`UsageError` if it records
    none (an image fed otherwise would be a different input from the one the model learnt)."""
    missing = [k for k in ("image_size", "mean", "std") if k not in meta]
    if missing:
        raise UsageError(
            f"{where} does not record the preprocessing its model was trained with (no "
            f"{', '.join(missing)}), so its images cannot be fed as the model saw them. Use a "
            f"checkpoint of torch-bam fit or demo, or save one with torch_bam.viz."
            f"save_checkpoint(..., image_size=, mean=, std=) set as in training."
        )
    in_chans, size, mean, std = input_settings(meta, where)
    resize, interpolation = _resizing(meta, where)
    dataset = meta.get("dataset")
    return Preprocessing(
        in_chans,
        size,
        size if resize is None else resize,
        interpolation,
        mean,
        std,
        dataset if isinstance(dataset, str) else None,
    )


def load_checkpoint(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint names, load its weights, return ``(model.eval(), meta)``.

    Raises:
        UsageError: the file is missing, unreadable or holds more than tensors and plain
            values; it names no registered model; its weights do not fit that model with its
            ``num_classes`` and ``in_chans``.
    """
    from ..models import create_model

    ckpt = read_checkpoint(path)
    if "hyper_parameters" in ckpt:  # Lightning
        meta = dict(ckpt["hyper_parameters"])
        if isinstance(ckpt.get("preprocessing"), Mapping):  # what torch-bam fit records
            meta.update(ckpt["preprocessing"])
        name = meta.get("model", meta.get("model_name"))
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    else:
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        if meta.get("format", FORMAT) != FORMAT:
            raise UsageError(
                f"{path} is in format {meta['format']!r}; this torch-bam reads {FORMAT!r}. "
                f"Use the torch-bam version that wrote it."
            )
        name = meta.get("model")
        state = ckpt["state_dict"]
    if not isinstance(name, str):
        raise UsageError(
            f"{path} does not name its model (hyper-parameter 'model' or 'model_name'). Save it "
            f"with a model name from torch_bam.list_models()."
        )
    kwargs = {"num_classes": _positive_int(meta.get("num_classes", 1000), "num_classes", path)}
    if "in_chans" in meta:
        kwargs["in_chans"] = _positive_int(meta["in_chans"], "in_chans", path)
    try:
        # First without memory (the meta device): settings that do not fit the weights (an
        # absurd num_classes) are named before anything is allocated.
        with torch.device("meta"):
            shapes = create_model(name, **kwargs)
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None
    _check_fit(shapes, state, path, name, kwargs)
    model = create_model(name, **kwargs)
    model.load_state_dict(state)
    return model.eval(), meta


def _check_fit(model: nn.Module, state: Any, path: str, name: str, kwargs: dict) -> None:
    """Name every way ``state`` does not fit ``model``, before load_state_dict's long error."""
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise UsageError(f"{path}: its state_dict is not a mapping of names to tensors.")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} (model: {list(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    problems = [
        f"{what} {some(keys)}"
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("other shapes:", shapes),
        )
        if keys
    ]
    settings = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    raise UsageError(
        f"{path}: its weights do not fit model {name} with {settings} ({'; '.join(problems)}). "
        f"The checkpoint names the wrong model, number of classes or input channels; save it "
        f"again with the settings it was trained with."
    )
