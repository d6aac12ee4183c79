"""BAM: Bottleneck Attention Module.

Park, Woo, Lee and Kweon, "BAM: Bottleneck Attention Module", BMVC 2018,
https://arxiv.org/abs/1807.06514

    M_c(F) = MLP(AvgPool(F))                         C -> C/r -> C, BN1d + ReLU in the hidden layer
    M_s(F) = f1x1(f3x3_d(f3x3_d(f1x1(F))))           C -> C/r -> C/r -> C/r -> 1
    F'     = F * (1 + sigmoid(M_c(F) + M_s(F)))

The paper's ablations (its Table 1) are options: ``combine="max"`` (``max(M_c, M_s)``) and
``attention="channel"`` or ``"spatial"`` (one gate: ``F * (1 + sigmoid(M_c))`` or ``M_s``).

Module and parameter names follow the seed code, so its state_dicts load with ``strict=True``.
"""

# No `from __future__ import annotations`: TorchScript reads the real annotations.
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import dispatch
from ._validate import (
    check_attention,
    check_combine,
    check_factory_dtype,
    check_hidden_width,
    check_norm,
    check_positive_int,
)
from .fold import fold_bam, folds
from .functional import bam_gate
from .norm import FrozenBatchNorm

# The gate too: FX records one bam_gate call (eager: the fused op), which TorchScript can then
# compile (its scripted form is the reference maths); the op node itself is not scriptable.
torch.fx.wrap("bam_gate")

__all__ = ["BAM", "ChannelGate", "SpatialGate"]


@dispatch.plain_gate
@folds("gate_c")
class ChannelGate(nn.Module):
    """Channel attention ``M_c``: global average pool, then a bottleneck MLP.

    Args:
        channels: input channels ``C``.
        reduction_ratio: ``r``; the hidden width is ``C // r``.
        num_layers: hidden layers of the MLP, each Linear + BatchNorm1d + ReLU.

    Shape:
        input ``[B, C, H, W]``, output (logits) ``[B, C]``.
    """

    def __init__(
        self,
        channels: int,
        reduction_ratio: int = 16,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = f"ChannelGate(channels={channels!r})"
        check_positive_int("channels", channels, owner)
        check_positive_int("reduction_ratio", reduction_ratio, owner)
        check_positive_int("num_layers", num_layers, owner)
        check_factory_dtype(dtype, owner)
        hidden = check_hidden_width(channels, reduction_ratio, owner)
        fk = {"device": device, "dtype": dtype}
        widths = [channels] + [hidden] * num_layers
        layers: list[nn.Module] = []
        # Index layout 0: Linear, 1: BN, 2: ReLU, ..., last: Linear -- the seed's keys.
        for i in range(num_layers):
            layers += [
                nn.Linear(widths[i], widths[i + 1], **fk),
                nn.BatchNorm1d(widths[i + 1], **fk),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Linear(hidden, channels, **fk))
        self.gate_c = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if not torch.jit.is_scripting():
            if self.training and isinstance(pooled, Tensor) and pooled.shape[0] == 1:
                return self._forward_one_sample(pooled)
        return self.gate_c(pooled)

    @torch.jit.unused
    def _forward_one_sample(self, pooled: Tensor) -> Tensor:
        # One sample has no batch statistics (BatchNorm1d refuses it): its BatchNorms normalise
        # with their running statistics, as in eval, and leave them as they are. They are put
        # in eval for this one call and called as usual, so hooks see the real computation.
        norms = [
            m for m in self.gate_c if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
        ]
        for m in norms:
            m.train(False)
        try:
            return self.gate_c(pooled)
        finally:
            for m in norms:
                m.train(True)


@dispatch.plain_gate
@folds("gate_s")
class SpatialGate(nn.Module):
    """Spatial attention ``M_s``: 1x1 reduce, dilated 3x3 convs, 1x1 to one map.

    Args:
        channels: input channels ``C``.
        reduction_ratio: ``r``; the gate works on ``C // r`` channels.
        dilation: dilation ``d`` of the 3x3 convs (padding ``d`` keeps ``H, W``).
        num_dilated_convs: how many dilated 3x3 convs, each with BN and ReLU.

    Shape:
        input ``[B, C, H, W]``, output (logits) ``[B, 1, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        reduction_ratio: int = 16,
        dilation: int = 4,
        num_dilated_convs: int = 2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = f"SpatialGate(channels={channels!r})"
        check_positive_int("channels", channels, owner)
        check_positive_int("reduction_ratio", reduction_ratio, owner)
        check_positive_int("dilation", dilation, owner)
        check_positive_int("num_dilated_convs", num_dilated_convs, owner)
        check_factory_dtype(dtype, owner)
        hidden = check_hidden_width(channels, reduction_ratio, owner)
        fk = {"device": device, "dtype": dtype}
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["gate_s_conv_reduce0"] = nn.Conv2d(channels, hidden, kernel_size=1, **fk)
        layers["gate_s_bn_reduce0"] = nn.BatchNorm2d(hidden, **fk)
        # In-place ReLUs: they overwrite BN outputs, which BN's backward does not need; this
        # saves a feature map per stage in training. (ReLU has no state: seed weights load.)
        layers["gate_s_relu_reduce0"] = nn.ReLU(inplace=True)
        for i in range(num_dilated_convs):
            layers[f"gate_s_conv_di_{i}"] = nn.Conv2d(
                hidden, hidden, kernel_size=3, padding=dilation, dilation=dilation, **fk
            )
            layers[f"gate_s_bn_di_{i}"] = nn.BatchNorm2d(hidden, **fk)
            layers[f"gate_s_relu_di_{i}"] = nn.ReLU(inplace=True)
        layers["gate_s_conv_final"] = nn.Conv2d(hidden, 1, kernel_size=1, **fk)
        self.gate_s = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.gate_s(x)


@torch.fx.wrap  # a leaf for FX: the checks read shapes, which a Proxy cannot branch on
def _check_input(x: Tensor, channels: int, batch_stats: bool, weight_dtype: torch.dtype) -> None:
    if torch.jit.is_tracing():  # a trace records a fixed graph; checks would only warn
        return
    if x.dim() != 4:
        hint = " Add the batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise ValueError(
            f"BAM expects a 4-D input [B, C, H, W], got a {x.dim()}-D tensor of shape "
            f"{list(x.shape)}.{hint}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"BAM was built for {channels} channels but the input has {x.shape[1]} "
            f"(shape {list(x.shape)}). Build it with BAM({x.shape[1]}) or check where it is placed."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"BAM expects a floating-point input, got {x.dtype}. Convert it first, "
            f"e.g. x.float() (and scale images to [0, 1])."
        )
    if batch_stats and x.shape[0] * x.shape[2] * x.shape[3] == 1:
        raise ValueError(
            f"BAM got one 1x1 map in training mode (shape {list(x.shape)}): the spatial gate's "
            f"BatchNorm2d has a single value per channel, no batch statistics. Train with a "
            f"batch of at least 2 or larger maps, put BAM where the map is larger than 1x1, "
            f"build it with norm='frozen', or call model.eval() for inference."
        )
    if not torch.jit.is_scripting():
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"BAM's weights are {weight_dtype} but the input is {x.dtype}. Convert one to "
                f"the other (module.to({x.dtype}) or x.to({weight_dtype})), or run under "
                f"torch.autocast."
            )


def _one_gate(x: Tensor, logits: Tensor, inplace: bool) -> Tensor:
    """A one-gate BAM's output ``x * (1 + sigmoid(logits))``, logits ``[B, C, 1, 1]`` or
    ``[B, 1, H, W]``: the paper's channel-only and spatial-only ablations, as plain ops."""
    if inplace:
        return x.mul_(torch.sigmoid(logits) + 1)
    return x * torch.sigmoid(logits) + x  # x first: the output takes x's memory format


class BAM(nn.Module):
    """Bottleneck Attention Module: ``F' = F * (1 + sigmoid(M_c(F) + M_s(F)))``.

    Args:
        channels: channels ``C`` of the feature map.
        reduction_ratio: ``r`` in both gates (paper: 16).
        dilation: dilation of the spatial gate's 3x3 convs (paper: 4).
        num_dilated_convs: dilated 3x3 convs in the spatial gate (paper: 2).
        channel_mlp_layers: hidden layers in the channel gate's MLP (paper: 1).
        combine: ``"sum"`` (paper), ``"max"`` (the paper's ablation: ``1 + sigmoid(max(M_c,
            M_s))``) or ``"product"``: ``1 + sigmoid(M_c * M_s)``, as the official code computes
            it; use it to run weights trained with that code.
        attention: ``"both"`` (paper), or the paper's ablations ``"channel"`` (only the channel
            gate: ``F * (1 + sigmoid(M_c))``) and ``"spatial"`` (only the spatial gate). A
            one-gate BAM holds only its gate (its state_dict keys are the full BAM's keys of
            that gate); ``combine`` does not apply to it. The CPU and CUDA rooms run the full
            block with ``"sum"`` or ``"product"``; the ablations take the plain path.
        device, dtype: where and how to create the parameters.
        inplace: in inference (grad mode off) write the output into the input tensor, saving
            one feature map of memory; with grad mode on it silently computes out of place, so
            the same module still trains.
        norm: ``"batch"`` (paper): BatchNorm in both gates. ``"frozen"``: their
            :class:`~torch_bam.norm.FrozenBatchNorm` copies, fixed statistics, scale and shift,
            for a backbone whose own norms are frozen (detectors; see :meth:`freeze_norms`).

    Batch size 1 in training (``norm="batch"``): one sample has no batch statistics over the
    channel gate's pooled ``[1, C]`` vector, so its BatchNorm1d normalises with its running
    statistics, as in eval, and does not update them; the spatial gate's BatchNorm2d still
    uses the batch statistics of the ``H x W`` map (a single 1x1 map is refused). Gradients
    flow as usual. (A scripted BAM or an FX graph runs the recorded layers as they are: there
    a batch of one in training is BatchNorm1d's own error.) A detector that trains with one
    image per GPU should rather use frozen norms, as its backbone does:
    ``add_bam(detector.backbone)`` does that by itself when the backbone's norms are frozen.

    Shape:
        input and output ``[B, C, H, W]``; the output keeps the input's memory format.

    Examples:
        >>> bam = BAM(256)
        >>> bam(torch.randn(2, 256, 56, 56)).shape
        torch.Size([2, 256, 56, 56])
    """

    combine: str
    attention: str
    channels: int
    inplace: bool
    norm: str

    def __init__(
        self,
        channels: int,
        reduction_ratio: int = 16,
        dilation: int = 4,
        num_dilated_convs: int = 2,
        channel_mlp_layers: int = 1,
        combine: str = "sum",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        inplace: bool = False,
        norm: str = "batch",
        attention: str = "both",
    ) -> None:
        super().__init__()
        owner = f"BAM(channels={channels!r})"
        check_norm(norm, owner)
        check_attention(attention, owner)
        check_positive_int("channels", channels, owner)
        check_positive_int("reduction_ratio", reduction_ratio, owner)
        check_positive_int("dilation", dilation, owner)
        check_positive_int("num_dilated_convs", num_dilated_convs, owner)
        check_positive_int("channel_mlp_layers", channel_mlp_layers, owner)
        check_combine(combine, owner)
        check_factory_dtype(dtype, owner)
        check_hidden_width(channels, reduction_ratio, owner)
        self.channels = channels
        self.reduction_ratio = reduction_ratio
        self.dilation = dilation
        self.num_dilated_convs = num_dilated_convs
        self.channel_mlp_layers = channel_mlp_layers
        self.combine = combine
        self.attention = attention
        self.inplace = bool(inplace)
        # A one-gate BAM has None for the other gate: no parameters, no keys; TorchScript
        # drops the branch that uses it.
        self.channel_att = None
        self.spatial_att = None
        if attention != "spatial":
            self.channel_att = ChannelGate(
                channels, reduction_ratio, channel_mlp_layers, device, dtype
            )
        if attention != "channel":
            self.spatial_att = SpatialGate(
                channels, reduction_ratio, dilation, num_dilated_convs, device, dtype
            )
        self.norm = "batch"
        if norm == "frozen":
            self.freeze_norms()

    def forward(self, x: Tensor) -> Tensor:
        weight_dtype = x.dtype
        if not torch.jit.is_scripting():
            weight_dtype = self._weight_dtype(x)
        _check_input(x, self.channels, self.training and self.norm == "batch", weight_dtype)
        if not torch.jit.is_scripting():
            y = self._dispatched_forward(x)
            if y is not None:
                return y
        inplace = self.inplace and not torch.is_grad_enabled()
        # TorchScript resolves these `is None` tests when it compiles (as torchvision's
        # `downsample`): a one-gate BAM's script holds only its branch.
        if self.channel_att is None:
            return _one_gate(x, self.spatial_att(x), inplace)
        if self.spatial_att is None:
            return _one_gate(x, self.channel_att(x)[:, :, None, None], inplace)
        channel_logits = self.channel_att(x)
        spatial_logits = self.spatial_att(x)
        return bam_gate(x, channel_logits, spatial_logits, self.combine, inplace)

    @torch.jit.unused
    def _weight_dtype(self, x: Tensor) -> torch.dtype:
        # The gates' float weights' dtype, for the input check: the final conv's as BAM builds
        # it; a replaced layer may hold none (a wrapper, a quantised conv): then the first float
        # parameter of the gates, or x's own (nothing to compare with).
        w = getattr(getattr(self.spatial_att, "gate_s", None), "gate_s_conv_final", None)
        w = getattr(w, "weight", None)
        if isinstance(w, Tensor) and w.is_floating_point():
            return w.dtype
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return x.dtype

    @torch.jit.unused
    def _dispatched_forward(self, x: Tensor) -> Optional[Tensor]:  # noqa: UP045 (TorchScript)
        # The CPU or CUDA room's path for this block, or None: the plain path below
        # (torch_bam.dispatch has the table).
        return dispatch.run_block(self, x)

    def freeze_norms(self) -> "BAM":
        """Replace each gate's BatchNorms by :class:`~torch_bam.norm.FrozenBatchNorm` copies
        with their statistics, scale and shift as they are now (in place; the state_dict keys
        stay, less ``num_batches_tracked``). Returns ``self``."""
        gates = [self.channel_att.gate_c] if self.channel_att is not None else []
        gates += [self.spatial_att.gate_s] if self.spatial_att is not None else []
        for gate in gates:
            for name, m in list(gate.named_children()):
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    setattr(gate, name, FrozenBatchNorm.from_batchnorm(m))
        self.norm = "frozen"
        return self

    def fuse_for_inference(self) -> "BAM":
        """Fold each gate's BatchNorms into the conv/linear before them (eval mode, in place).

        See :func:`torch_bam.fold.fold_bam`. Returns ``self``.
        """
        return fold_bam(self)  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, reduction_ratio={self.reduction_ratio}, "
            f"dilation={self.dilation}, num_dilated_convs={self.num_dilated_convs}, "
            f"channel_mlp_layers={self.channel_mlp_layers}, combine={self.combine!r}"
            + (f", attention={self.attention!r}" if self.attention != "both" else "")
            + (", inplace=True" if self.inplace else "")
            + (", norm='frozen'" if self.norm == "frozen" else "")
        )
