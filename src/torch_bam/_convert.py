"""Convert and load weights written by the official BAM code
(github.com/Jongchan/attention-module) and by pytorchcv (github.com/osmr/imgclsmob).

The official ``ChannelGate`` names its layers ``gate_c_fc_0``, ``gate_c_bn_1``, ...,
``gate_c_fc_final``; torch_bam (like the seed) uses a plain ``nn.Sequential`` with indices.
The spatial gate's names (``gate_s_conv_reduce0``, ``gate_s_conv_di_0``, ...) are the same in
all three. Both codes combine the maps as ``1 + sigmoid(M_c * M_s)`` and put the stride of a
downsampling bottleneck in its 3x3 conv: the receiving network needs ``combine="product"`` and
``stride_in_3x3=True`` (``torch_bam.compat.official_bam_resnet`` builds it; the loaders check it).

The converters live here, apart from :mod:`torch_bam.compat`'s network builder, because the
pretrained loader (``torch_bam.models._pretrained``) uses them: this module imports nothing
from ``torch_bam.models``, so models -> converters -> models is no cycle.
pytorchcv's ``bam_resnet*`` has the official layout under its own names
(``features.stage2.unit1.bam.ch_att.init_fc.fc``, ...): :func:`convert_pytorchcv_state_dict`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from torch import Tensor, nn

from .bam import BAM
from .errors import UsageError

__all__ = [
    "check_official_layout",
    "convert_official_state_dict",
    "convert_pytorchcv_state_dict",
    "load_official_bam",
    "load_official_checkpoint",
    "load_state_dict_strict",
]

_FC = re.compile(r"^(?P<prefix>.*gate_c\.)gate_c_fc_(?P<i>\d+)\.(?P<rest>.+)$")
_BN = re.compile(r"^(?P<prefix>.*gate_c\.)gate_c_bn_(?P<i>\d+)\.(?P<rest>.+)$")
_FINAL = re.compile(r"^(?P<prefix>.*gate_c\.)gate_c_fc_final\.(?P<rest>.+)$")


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official-code state_dict's keys to torch_bam's.

    Works on one block or a whole network: every ``...gate_c.gate_c_*`` key is renamed, every
    other key is kept, and a DataParallel ``module.`` prefix is removed.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"convert_official_state_dict expects a state_dict mapping, got "
            f"{type(state_dict).__name__}. Pass "
            f"torch.load(path, weights_only=True)['state_dict'] or similar."
        )
    items = {k.removeprefix("module."): v for k, v in state_dict.items()}
    # Hidden layers per channel gate: the final Linear's index depends on it.
    hidden_layers: dict[str, int] = {}
    for key in items:
        m = _FC.match(key)
        if m:
            prefix = m["prefix"]
            hidden_layers[prefix] = max(hidden_layers.get(prefix, 0), int(m["i"]) + 1)
    out: dict[str, Tensor] = {}
    for key, value in items.items():
        if m := _FINAL.match(key):
            new = f"{m['prefix']}{3 * hidden_layers.get(m['prefix'], 1)}.{m['rest']}"
        elif m := _FC.match(key):
            new = f"{m['prefix']}{3 * int(m['i'])}.{m['rest']}"
        elif m := _BN.match(key):
            new = f"{m['prefix']}{3 * (int(m['i']) - 1) + 1}.{m['rest']}"
        else:
            new = key
        out[new] = value
    return out


def load_official_bam(state_dict: Mapping[str, Tensor], **bam_kwargs) -> BAM:
    """Build a :class:`BAM` from one official-code block's state_dict and load it strictly.

    The channel count, reduction ratio, number of dilated convs and MLP depth are read from
    the weights; ``combine`` defaults to ``"product"``, the official formula. Pass
    ``dilation=`` if the block was trained with a dilation other than 4 (it is not stored).
    """
    sd = convert_official_state_dict(state_dict)
    key = "spatial_att.gate_s.gate_s_conv_reduce0.weight"
    if key not in sd:
        raise KeyError(
            f"load_official_bam: no '{key}' in the state_dict; this is not one BAM block's "
            f"weights. For a whole network, use convert_official_state_dict and load the result "
            f"into the network."
        )
    hidden, channels = sd[key].shape[:2]
    num_dilated = sum(
        1 for k in sd if re.fullmatch(r"spatial_att\.gate_s\.gate_s_conv_di_\d+\.weight", k)
    )
    mlp_layers = sum(1 for k in sd if re.fullmatch(r"channel_att\.gate_c\.\d+\.running_mean", k))
    kwargs = dict(
        reduction_ratio=channels // hidden,
        num_dilated_convs=num_dilated,
        channel_mlp_layers=mlp_layers,
        combine="product",
        dtype=sd[key].dtype,
    )
    kwargs.update(bam_kwargs)
    bam = BAM(channels, **kwargs)
    bam.load_state_dict(sd, strict=True)
    return bam


def _state_dict_of(checkpoint: Mapping) -> Mapping[str, Tensor]:
    """The weights in a checkpoint: the official train script saves ``{'state_dict': ...}``."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f"expected a checkpoint or state_dict mapping, got {type(checkpoint).__name__}. "
            f"Pass torch.load(path, map_location='cpu', weights_only=True)."
        )
    inner = checkpoint.get("state_dict")
    weights = inner if isinstance(inner, Mapping) else checkpoint
    if not any(isinstance(v, Tensor) for v in weights.values()):
        where = "its 'state_dict' is empty" if inner is not None else "it has no tensors"
        raise UsageError(
            f"the checkpoint holds no weights ({where}). Pass the file the official "
            f"train_imagenet.py saved, e.g. torch.load('RESNET50_IMAGENET_BAM_best.pth.tar', "
            f"map_location='cpu', weights_only=True)."
        )
    return weights


def _examples(keys, n: int = 3) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str, new: Collection[str] = ()
):
    """``model.load_state_dict(state_dict, strict=True)``, but a mismatch is one line: how many
    keys are missing, unexpected or of another shape, with a few of each, naming ``source``.

    ``new`` names keys the weights may lack (a new classifier); BatchNorm's
    ``num_batches_tracked`` may be missing too (files from before PyTorch 0.4.1, or converted
    from other frameworks, have none; BatchNorm fills it in).
    """
    own = model.state_dict()
    missing = {
        k
        for k in own.keys() - state_dict.keys()
        if k not in set(new) and not k.endswith("num_batches_tracked")
    }
    unexpected = state_dict.keys() - own.keys()
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(own.keys() & state_dict.keys())
        if isinstance(state_dict[k], Tensor) and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_examples(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_examples(unexpected)}")
        if shapes:
            parts.append(f"other shapes (file vs model): {'; '.join(shapes[:3])}")
        raise UsageError(
            f"{source}: the weights do not fit the model ({'; '.join(parts)}). Build the "
            f"network the weights were trained in (same depth, classes and layout)."
        )
    return model.load_state_dict(state_dict, strict=not new)


def check_official_layout(
    model: nn.Module, state_dict: Mapping[str, Tensor] | None = None, source: str = "the weights"
) -> None:
    """Refuse ``model`` if it is not laid out as the official code's (and pytorchcv's) ResNet:
    every BAM with ``combine="product"``, the stride of a downsampling bottleneck in its 3x3
    conv, and, given the converted ``state_dict``, the same stem (ImageNet 7x7 or CIFAR 3x3).

    The weights load into either stride layout without a shape error, but give other outputs
    (ImageNet logits about 9% off): hence a check on the model, not on the keys.
    """
    sums = [
        name for name, m in model.named_modules() if isinstance(m, BAM) and m.combine != "product"
    ]
    if sums:
        raise UsageError(
            f"{source}: the BAMs at {sums} use combine={model.get_submodule(sums[0]).combine!r}, "
            f"but the weights were trained with 1 + sigmoid(M_c * M_s). Build the model with "
            f"combine='product' (e.g. torch_bam.compat.official_bam_resnet(depth))."
        )
    in_bam = {id(m) for b in model.modules() if isinstance(b, BAM) for m in b.modules()}
    strided_1x1 = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and id(m) not in in_bam
        and m.kernel_size == (1, 1)
        and m.stride != (1, 1)
        and "downsample" not in name.split(".")
    ]
    if strided_1x1:
        raise UsageError(
            f"{source}: the model has the stride of a downsampling bottleneck in its 1x1 conv "
            f"({', '.join(strided_1x1[:3])}), but the weights were trained with it in the 3x3 "
            f"conv. Build the model with stride_in_3x3=True (official_bam_resnet(depth) does)."
        )
    stem = state_dict.get("conv1.weight") if state_dict is not None else None
    conv1 = getattr(model, "conv1", None)
    if isinstance(stem, Tensor) and isinstance(conv1, nn.Conv2d) and stem.ndim == 4:
        if tuple(stem.shape[-2:]) != conv1.kernel_size:
            kind = {3: "CIFAR (3x3 stem)", 7: "ImageNet (7x7 stem)"}.get(stem.shape[-1], "other")
            fix = "dataset='cifar100'" if stem.shape[-1] == 3 else "dataset='imagenet'"
            raise UsageError(
                f"{source}: the weights are for the official code's {kind} network, but the "
                f"model's first conv is {conv1.kernel_size[0]}x{conv1.kernel_size[1]}. Build it "
                f"with torch_bam.compat.official_bam_resnet(depth, {fix})."
            )


def load_official_checkpoint(model: nn.Module, checkpoint: Mapping, strict: bool = True):
    """Load a whole network's checkpoint written by the official code into ``model``.

    ``checkpoint`` is what the official ``train_imagenet.py`` saves (``{'state_dict': ...}``,
    with DataParallel's ``module.`` prefix) or a bare state_dict. The channel gates' keys are
    renamed; everything else keeps its name, so ``model`` must name its layers as the official
    network does: :func:`official_bam_resnet` builds one. ``model`` must be laid out as the
    official network (:func:`check_official_layout`: product combine, stride in the 3x3, same
    stem), or this raises. Returns ``load_state_dict``'s result.
    """
    state_dict = convert_official_state_dict(_state_dict_of(checkpoint))
    check_official_layout(model, state_dict, "load_official_checkpoint")
    if strict:
        return load_state_dict_strict(model, state_dict, "load_official_checkpoint")
    return model.load_state_dict(state_dict, strict=False)


# --- pytorchcv (osmr/imgclsmob) -------------------------------------------------------------

_PTCV_UNIT = re.compile(r"^features\.stage(?P<s>[1-4])\.unit(?P<u>\d+)\.(?P<rest>.+)$")
_PTCV_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# (pattern on the rest of a unit's key, its torch_bam name inside layer<s>.<unit - 1>)
_PTCV_RES = [
    (r"res_unit\.body\.conv(\d)\.conv\.weight", r"conv\1.weight"),
    (rf"res_unit\.body\.conv(\d)\.bn\.{_PTCV_BN}", r"bn\1.\2"),
    (r"res_unit\.identity_conv\.conv\.weight", r"downsample.0.weight"),
    (rf"res_unit\.identity_conv\.bn\.{_PTCV_BN}", r"downsample.1.\1"),
]
_PTCV_BAM = [
    (r"ch_att\.init_fc\.fc\.(weight|bias)", r"channel_att.gate_c.0.\1"),
    (rf"ch_att\.init_fc\.bn\.{_PTCV_BN}", r"channel_att.gate_c.1.\1"),
    (r"sp_att\.init_conv\.conv\.(weight|bias)", r"spatial_att.gate_s.gate_s_conv_reduce0.\1"),
    (rf"sp_att\.init_conv\.bn\.{_PTCV_BN}", r"spatial_att.gate_s.gate_s_bn_reduce0.\1"),
    (r"sp_att\.final_conv\.(weight|bias)", r"spatial_att.gate_s.gate_s_conv_final.\1"),
]
_PTCV_MAIN_FC = re.compile(r"^ch_att\.main_fcs\.fc(\d+)\.(fc|bn)\.(.+)$")
_PTCV_FINAL_FC = re.compile(r"^ch_att\.final_fc\.(weight|bias)$")
_PTCV_DIL = re.compile(r"^sp_att\.dil_convs\.conv(\d+)\.(conv|bn)\.(.+)$")
_PTCV_TOP = [
    (r"features\.init_block\.conv\.conv\.weight", "conv1.weight"),
    (rf"features\.init_block\.conv\.bn\.{_PTCV_BN}", r"bn1.\1"),
    (r"output\.(weight|bias)", r"fc.\1"),
]


def _ptcv_bam_key(rest: str, hidden_layers: int) -> str | None:
    for pattern, repl in _PTCV_BAM:
        if re.fullmatch(pattern, rest):
            return re.sub(pattern, repl, rest)
    if m := _PTCV_MAIN_FC.match(rest):  # hidden layer i (from 1) after init_fc (layer 0)
        index = 3 * int(m[1]) + (0 if m[2] == "fc" else 1)
        return f"channel_att.gate_c.{index}.{m[3]}"
    if m := _PTCV_FINAL_FC.match(rest):
        return f"channel_att.gate_c.{3 * hidden_layers}.{m[1]}"
    if m := _PTCV_DIL.match(rest):
        kind = "conv" if m[2] == "conv" else "bn"
        return f"spatial_att.gate_s.gate_s_{kind}_di_{int(m[1]) - 1}.{m[3]}"
    return None


def _ptcv_key(key: str, hidden_layers: dict[str, int]) -> str | None:
    for pattern, repl in _PTCV_TOP:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    m = _PTCV_UNIT.match(key)
    if m is None:
        return None
    stage, unit, rest = int(m["s"]), int(m["u"]), m["rest"]
    if rest.startswith("bam."):
        # pytorchcv runs BAM at the input of a stage's first unit; torch_bam after the stage
        # before: the same place, named bam1..bam3 (stages 2..4).
        if unit != 1 or stage == 1:
            return None
        prefix = f"features.stage{stage}.unit1.bam."
        new = _ptcv_bam_key(rest.removeprefix("bam."), hidden_layers.get(prefix, 1))
        return None if new is None else f"bam{stage - 1}.{new}"
    for pattern, repl in _PTCV_RES:
        if re.fullmatch(pattern, rest):
            return f"layer{stage}.{unit - 1}." + re.sub(pattern, repl, rest)
    return None


def convert_pytorchcv_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the keys of a pytorchcv ``bam_resnet18/34/50/101/152`` state_dict to torch_bam's.

    pytorchcv's network is the official code's (stride in the 3x3, product combine): load the
    result into ``official_bam_resnet(depth)`` or ``create_model("bam_resnet<depth>",
    stride_in_3x3=True, combine="product")``. A state_dict of any other network (pytorchcv's
    plain ResNet, CBAM-ResNet, a torch_bam one, ...) is refused with the keys that do not fit.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"convert_pytorchcv_state_dict expects a state_dict mapping, got "
            f"{type(state_dict).__name__}. Pass torch.load(path, weights_only=True)."
        )
    items = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if not items:
        raise UsageError("convert_pytorchcv_state_dict: the state_dict is empty (no weights).")
    hidden_layers: dict[str, int] = {}
    for key in items:
        if m := re.match(r"^(features\.stage\d+\.unit1\.bam\.)ch_att\.main_fcs\.fc(\d+)\.", key):
            hidden_layers[m[1]] = max(hidden_layers.get(m[1], 1), int(m[2]) + 1)
    out: dict[str, Tensor] = {}
    foreign = []
    for key, value in items.items():
        new = _ptcv_key(key, hidden_layers)
        if new is None:
            foreign.append(key)
        else:
            out[new] = value
    if foreign:
        raise UsageError(
            f"convert_pytorchcv_state_dict: {len(foreign)} of {len(items)} keys are not those "
            f"of pytorchcv's BAM-ResNet ({_examples(foreign)}). This converter reads only "
            f"pytorchcv's bam_resnet18/34/50/101/152; for the official code's weights use "
            f"convert_official_state_dict."
        )
    if not any(k.startswith("bam") for k in out):
        raise UsageError(
            "convert_pytorchcv_state_dict: the state_dict has no BAM weights "
            "(features.stage2.unit1.bam...): it is a plain ResNet, not pytorchcv's BAM-ResNet."
        )
    return out
