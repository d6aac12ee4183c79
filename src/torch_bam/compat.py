"""Load weights written by the official BAM code (github.com/Jongchan/attention-module).

The official ``ChannelGate`` names its layers ``gate_c_fc_0``, ``gate_c_bn_1``, ...,
``gate_c_fc_final``; torch_bam (like the seed) uses a plain ``nn.Sequential`` with indices.
The spatial gate's names (``gate_s_conv_reduce0``, ``gate_s_conv_di_0``, ...) are the same in
all three. The official code combines the maps as ``1 + sigmoid(M_c * M_s)``: build the
receiving modules with ``combine="product"`` to get the same outputs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from .bam import BAM

__all__ = [
    "convert_official_state_dict",
    "load_official_bam",
    "load_official_checkpoint",
    "official_bam_resnet",
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
    return inner if isinstance(inner, Mapping) else checkpoint


def load_official_checkpoint(model: nn.Module, checkpoint: Mapping, strict: bool = True):
    """Load a whole network's checkpoint written by the official code into ``model``.

    ``checkpoint`` is what the official ``train_imagenet.py`` saves (``{'state_dict': ...}``,
    with DataParallel's ``module.`` prefix) or a bare state_dict. The channel gates' keys are
    renamed; everything else keeps its name, so ``model`` must name its layers as the official
    network does: :func:`official_bam_resnet` builds one. Every BAM in ``model`` must use
    ``combine="product"`` to give the official outputs. Returns ``load_state_dict``'s result.
    """
    sums = [
        name for name, m in model.named_modules() if isinstance(m, BAM) and m.combine != "product"
    ]
    if sums:
        raise ValueError(
            f"load_official_checkpoint: the BAMs at {sums} use combine='sum', but the official "
            f"code computes 1 + sigmoid(M_c * M_s). Build the model with combine='product' "
            f"(e.g. torch_bam.compat.official_bam_resnet(depth))."
        )
    return model.load_state_dict(convert_official_state_dict(_state_dict_of(checkpoint)), strict)


def official_bam_resnet(
    depth: int, num_classes: int = 1000, checkpoint: Mapping | None = None
) -> nn.Module:
    """torch_bam's ``bam_resnet<depth>`` set up as the official code's ``ResidualNet``.

    That is: the stride in the 3x3 conv of a downsampling bottleneck (``stride_in_3x3=True``,
    the official code's layout, not the paper's v1) and ``combine="product"``. Its adaptive
    average pool equals the official ``AvgPool2d(7)`` on 224x224 inputs. If ``checkpoint`` is
    given, it is loaded strictly with :func:`load_official_checkpoint`.
    """
    from .models import create_model

    if depth not in (18, 34, 50, 101, 152):
        raise ValueError(f"official_bam_resnet: depth must be 18, 34, 50, 101 or 152, got {depth}.")
    model = create_model(
        f"bam_resnet{depth}", num_classes=num_classes, stride_in_3x3=True, combine="product"
    )
    if checkpoint is not None:
        load_official_checkpoint(model, checkpoint, strict=True)
    return model
