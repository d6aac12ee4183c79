"""Save a network as timm shares one, and load it back: a folder (or a Hugging Face Hub
repository) holding ``config.json`` and ``model.safetensors``.

The layout is timm's (``timm.models._hub.save_for_hf``, timm >= 1.0.29)::

    config.json         {"architecture": "bam_resnet50", "num_classes": 1000,
                         "num_features": 2048, "global_pool": "avg",
                         "model_args": {"combine": "product", "stride_in_3x3": true},
                         "pretrained_cfg": {... the preprocessing: input_size, mean, std,
                                            interpolation, crop_pct, ...}}
    model.safetensors   the state_dict, in torch_bam's own key names (no converter needed)

so ``timm.create_model("local-dir:PATH", pretrained=True)`` (after ``import torch_bam``) and
``torch_bam.create_model("local-dir:PATH", pretrained=True)`` build the same network with the
same weights; ``"hf-hub:org/name"`` does the same from the Hub (with ``huggingface_hub``).
The architecture is written under the name timm knows it by (``bam_*`` as is, baselines as
``torch_bam_<name>``); both loaders accept either.

Weights are written with safetensors (never pickle), which is imported only here, when a
folder is written or read: the core needs only torch. A folder is written whole or not at
all: into a temporary folder beside it, then renamed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ._cfg import get_pretrained_cfg
from ._registry import _MODELS, _cfg_from_dict, create_model, unknown_model_hint
from ._registry import _SOURCES as _SOURCE_LOADERS
from ._timm import timm_name

__all__ = ["create_from_source", "load_folder_config", "save_pretrained"]

_logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"  # what timm's save_for_hf writes by default
CARD_NAME = "README.md"
SOURCES = ("local-dir", "hf-hub")
_OURS = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}

# Fields of our configuration that describe where a published file came from and how to
# convert its keys: the folder holds torch_bam's own keys in its own file, so none applies.
_SOURCE_FIELDS = (
    "url",
    "file",
    "hf_hub_id",
    "source",
    "hash_sha1",
    "hash_sha256",
    "archive",
    "converter",
    "filename",
    "model_args",
    "architecture",
)


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise UsageError(
            "saving or loading a model folder needs safetensors: pip install "
            "'torch-bam[hub]' (or pip install safetensors)."
        ) from None
    return safetensors.torch


def _json_value(key: str, value: Any) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"save_pretrained: model argument {key}={value!r} cannot be written to config.json "
            f"(not a plain value). Pass model_args={{{key!r}: <a string or number>}} instead."
        ) from None
    return value


def folder_config(
    model: nn.Module,
    model_args: dict | None = None,
    pretrained_cfg: dict | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of ``model`` (built by :func:`torch_bam.create_model`)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    arch = cfg.get("architecture")
    if arch not in _MODELS:
        raise UsageError(
            f"save_pretrained: the model has no torch_bam architecture (pretrained_cfg "
            f"{'has ' + repr(arch) if arch else 'is missing'}). Build it with "
            f"torch_bam.create_model(name) so it can be rebuilt by name."
        )
    cfg.update(pretrained_cfg or {})
    # The arguments it was built with (create_model records them), the weights' own flags
    # (combine="product", ...) first.
    args = {**(cfg.get("model_args") or {}), **getattr(model, "_model_args", {})}
    args.update(model_args or {})
    args.pop("num_classes", None)
    args.pop("pretrained", None)
    args = {k: _json_value(k, v) for k, v in args.items()}
    num_classes = getattr(model, "num_classes", cfg.get("num_classes"))
    in_chans = args.get("in_chans")
    pcfg = {k: _json_value(k, v) for k, v in cfg.items() if k not in _SOURCE_FIELDS}
    # timm keeps pool_size even when None; empty strings and lists say nothing.
    pcfg = {k: v for k, v in pcfg.items() if k == "pool_size" or v not in (None, "", [])}
    if in_chans is not None:
        pcfg["input_size"] = [in_chans, *list(pcfg.get("input_size", (3, 224, 224)))[1:]]
        for key in ("mean", "std"):  # one value per channel; a grey default is one value
            values = pcfg.get(key)
            if isinstance(values, list) and len(values) != in_chans and len(set(values)) == 1:
                pcfg[key] = values[:1] * in_chans
    pcfg["num_classes"] = num_classes
    pcfg["custom_load"] = False  # timm: the file holds the model's own state_dict
    config: dict[str, Any] = {"architecture": timm_name(arch), "num_classes": num_classes}
    if getattr(model, "num_features", None) is not None:
        config["num_features"] = model.num_features
    pool = getattr(getattr(model, "global_pool", None), "pool_type", None)
    if isinstance(pool, str) and pool:
        config["global_pool"] = pool
    if args:
        config["model_args"] = args
    config["pretrained_cfg"] = pcfg
    return config


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    model_args: dict | None = None,
    pretrained_cfg: dict | None = None,
    model_card: str | None = None,
) -> Path:
    """Write ``model`` to ``directory`` as timm shares models: ``config.json`` and
    ``model.safetensors`` (and ``README.md`` if ``model_card`` is given).

    Args:
        model: a network built by :func:`torch_bam.create_model` (it carries its
            architecture and preprocessing as ``model.pretrained_cfg``).
        directory: the folder; created, or replaced if it holds only such files.
        model_args: arguments to record besides those ``create_model`` was given
            (``combine``, ``stride_in_3x3``, ``in_chans``, ...).
        pretrained_cfg: fields to change in the recorded configuration, e.g. the
            preprocessing it was trained with: ``dict(input_size=(1, 48, 48), mean=..., ...)``.
        model_card: text of the folder's ``README.md``.

    Returns:
        the folder's path. Load it with ``torch_bam.create_model("local-dir:" + path,
        pretrained=True)`` or ``timm.create_model`` with the same name.
    """
    st = _safetensors()
    config = folder_config(model, model_args, pretrained_cfg)
    # safetensors holds plain, unshared tensors: one contiguous copy each.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    directory = Path(directory)
    _check_target(directory)
    with _staged(directory) as tmp:
        st.save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if model_card is not None:
            (tmp / CARD_NAME).write_text(model_card)
    return directory


def _check_target(directory: Path) -> None:
    if directory.is_file() or (directory.is_symlink() and not directory.is_dir()):
        raise UsageError(f"{directory} is a file, not a folder. Choose a folder to write to.")
    if directory.is_dir():
        others = sorted(p.name for p in directory.iterdir() if p.name not in _OURS)
        if others:
            raise UsageError(
                f"{directory} holds other files ({', '.join(others[:3])}); a model folder is "
                f"replaced whole. Choose a new or empty folder."
            )


@contextlib.contextmanager
def _staged(directory: Path):
    """A temporary folder beside ``directory``, renamed to it once filled; on any failure
    removed, and ``directory`` left as it was."""
    parent = directory.parent
    missing = [d for d in (parent, *parent.parents) if not d.exists()]  # deepest first
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".torch-bam-tmp-", dir=parent))
    except OSError as e:
        raise UsageError(
            f"cannot write {directory}: {e.strerror or e} ({e.filename or parent}). Choose a "
            f"folder you can write to."
        ) from None
    try:
        yield tmp
        # mkdtemp makes 0700 and safetensors 0600 files: give them the usual modes (umask).
        tmp.chmod(0o777 & ~_umask())
        for p in tmp.iterdir():
            p.chmod(0o666 & ~_umask())
        if directory.is_dir():  # swap: the old folder leaves only once the new one is whole
            old = Path(tempfile.mkdtemp(prefix=".torch-bam-old-", dir=parent))
            os.replace(directory, old / "x")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(missing)
        raise


def remove_empty(folders) -> None:
    """Remove ``folders`` (deepest first) that a failed write created, if still empty."""
    for d in folders:
        with contextlib.suppress(OSError):
            d.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- loading -------------------------------------------------------------------------------


def _architecture(name: object, where: str) -> str:
    if isinstance(name, str) and name not in _MODELS and name.startswith("torch_bam_"):
        name = name[len("torch_bam_") :]  # a baseline under its timm name
    if not isinstance(name, str) or name not in _MODELS:
        hint = unknown_model_hint(name) if isinstance(name, str) else ""
        raise UsageError(
            f"{where}: architecture {name!r} is not a torch_bam model.{hint} Load it with "
            f"timm.create_model if it is one of timm's."
        )
    return name


def load_folder_config(config: dict, where: str) -> tuple[str, dict, dict]:
    """``(architecture, pretrained_cfg, model_args)`` from a ``config.json``, as timm parses
    it (``timm.models._hub._parse_model_cfg``)."""
    if not isinstance(config, dict) or "architecture" not in config:
        raise UsageError(f"{where} is not a model folder's config.json (no 'architecture').")
    if "pretrained_cfg" not in config:  # timm's older single-dict layout
        config = {"architecture": config["architecture"], "pretrained_cfg": dict(config)}
    arch = _architecture(config["architecture"], where)
    pcfg = dict(config.get("pretrained_cfg") or {})
    if "num_classes" in config:
        pcfg["num_classes"] = config["num_classes"]
    args = dict(config.get("model_args") or {})
    return arch, pcfg, args


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{path.parent} is not a model folder: it has no {CONFIG_NAME}. Write one with "
            f"torch_bam.save_pretrained(model, folder) or torch-bam export --to folder."
        ) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}. Write the folder again.") from None


def _fetch(source: str, ident: str, filename: str, required: bool = True) -> Path | None:
    """A file of the folder: a local path, or downloaded from the Hub (cached there)."""
    if source == "local-dir":
        path = Path(ident).expanduser() / filename
        return path if path.is_file() or required else None
    try:
        import huggingface_hub
    except ImportError:
        raise UsageError(
            "hf-hub: names need huggingface_hub: pip install 'torch-bam[hub]' (or pip install "
            "huggingface_hub); or download the repository and use local-dir:PATH."
        ) from None
    repo, _, revision = ident.partition("@")
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename, revision=revision or None))
    except Exception as e:
        if not required and type(e).__name__ in (
            "EntryNotFoundError",
            "RemoteEntryNotFoundError",
            "LocalEntryNotFoundError",
        ):
            return None
        raise UsageError(
            f"hf-hub:{ident}: cannot get {filename} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Check the repository name and your "
            f"connection."
        ) from None


def read_weights(source: str, ident: str) -> dict[str, torch.Tensor]:
    """The folder's state_dict: ``model.safetensors``, else timm's ``pytorch_model.bin``
    (read with ``torch.load(weights_only=True)``)."""
    path = _fetch(source, ident, WEIGHTS_NAME, required=False)
    if path is not None and path.is_file():
        try:
            return dict(_safetensors().load_file(str(path)))
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(
                f"cannot read {path} ({type(e).__name__}): it is damaged or not safetensors. "
                f"Write the folder again."
            ) from None
    legacy = _fetch(source, ident, LEGACY_WEIGHTS_NAME, required=False)
    if legacy is not None and legacy.is_file():
        from .._io import load_weights_only

        return dict(load_weights_only(legacy, "Write the folder again with save_pretrained."))
    raise UsageError(
        f"{source}:{ident} holds no weights ({WEIGHTS_NAME}). Write it with "
        f"torch_bam.save_pretrained(model, folder)."
    )


def create_from_source(
    source: str,
    ident: str,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices=None,
    **kwargs,
) -> nn.Module:
    """Build the network a folder (``local-dir``) or Hub repository (``hf-hub``) describes,
    with its weights if ``pretrained``. ``kwargs`` override its recorded model arguments;
    ``num_classes`` other than the folder's gives a new classifier (fine-tuning)."""
    from ._pretrained import adapt_input_conv

    name = f"{source}:{ident}"
    if not ident:
        raise UsageError(f"create_model({name!r}): give a folder or repository after {source}:.")
    path = _fetch(source, ident, CONFIG_NAME)
    arch, pcfg, args = load_folder_config(_read_json(path), str(path))
    args = {**args, **kwargs}
    args.pop("pretrained_model_args", None)  # timm's record of the same arguments
    saved_classes = pcfg.get("num_classes")
    if num_classes is None:
        num_classes = saved_classes
    base = get_pretrained_cfg(arch).to_dict()
    keep = {k: v for k, v in pcfg.items() if k not in _SOURCE_FIELDS}
    cfg = _cfg_from_dict({**base, **keep, "architecture": arch, "model_args": {}})
    if isinstance(args.get("in_chans"), int):  # the input it now takes (timm does the same)
        cfg = cfg.replace(input_size=(args["in_chans"], *cfg.input_size[1:]))
    model = create_model(arch, num_classes=num_classes, **args)
    model.pretrained_cfg = model.default_cfg = {
        **cfg.to_dict(),
        "num_classes": getattr(model, "num_classes", cfg.num_classes),
        "model_args": dict(args),
        "source": source,
        ("file" if source == "local-dir" else "hf_hub_id"): ident,
    }
    if pretrained:
        state = read_weights(source, ident)
        new = []
        own = model.state_dict()
        if cfg.classifier and getattr(model, "num_classes", saved_classes) != saved_classes:
            new = [k for k in own if k.startswith(f"{cfg.classifier}.")]
            for k in new:
                state.pop(k, None)
            _logger.warning(
                "%s: loaded all weights but the classifier %s, which is new (%s classes; the "
                "weights have %s): train it before use.",
                name,
                cfg.classifier,
                getattr(model, "num_classes", None),
                saved_classes,
            )
        key = f"{cfg.first_conv}.weight"
        if cfg.first_conv and key in state and key in own:
            want, have = own[key].shape[1], state[key].shape[1]
            if want != have:
                state[key] = adapt_input_conv(want, state[key], base_chans=have)
        from .._convert import load_state_dict_strict

        load_state_dict_strict(model, state, name, new=new)
    if features_only:
        from ._features import FeatureNet

        model = FeatureNet(model, out_indices)
    elif out_indices is not None:
        raise UsageError(f"create_model({name!r}): out_indices is for features_only=True.")
    return model


for _source in SOURCES:  # create_model("local-dir:PATH") and ("hf-hub:org/name") come here
    _SOURCE_LOADERS[_source] = create_from_source
