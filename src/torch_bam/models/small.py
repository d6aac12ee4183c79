"""A small CNN for quick runs on a CPU (demo, tests), as a baseline and with BAM."""

import torch
from torch import Tensor, nn

from ..bam import BAM
from ._interface import TimmInterface, check_head_args
from ._registry import register_model


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(TimmInterface, nn.Module):
    """Three conv stages (32, 64, 128 channels), max-pool between them, BAM before each pool."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        use_bam: bool = False,
        **bam_kwargs,
    ):
        super().__init__()
        check_head_args("SmallCNN", num_classes, global_pool, drop_rate)
        widths = (32, 64, 128)
        bam_kwargs.setdefault("reduction_ratio", 8)
        self.stages = nn.ModuleList()
        self.bams = nn.ModuleList()
        cin = in_chans
        levels = []
        for i, w in enumerate(widths):
            self.stages.append(_stage(cin, w))
            last = i == len(widths) - 1
            self.bams.append(BAM(w, **bam_kwargs) if use_bam and not last else nn.Identity())
            names = ("stages.0", "bams.0") if i == 0 else ("pool", f"stages.{i}", f"bams.{i}")
            levels.append((names, w, 2**i))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self._init_interface(cin, num_classes, global_pool, drop_rate, levels)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_checkpointed(x)
        first = True
        for stage, bam in zip(self.stages, self.bams):  # noqa: B905 (TorchScript has no strict)
            if not first:
                x = self.pool(x)
            x = bam(stage(x))
            first = False
        return x

    def _group_matcher(self, coarse: bool) -> dict:
        return dict(blocks=[(r"^stages\.(\d+)", None), (r"^bams\.(\d+)", (99999,))])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the classifier was named fc: head.2.* (Sequential index).
        for key in [k for k in state_dict if k.startswith(prefix + "head.2.")]:
            state_dict[prefix + "fc." + key[len(prefix + "head.2.") :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# The demo feeds images in [0, 1] as they are: mean 0, std 1.
_CFG = dict(
    input_size=(3, 32, 32),
    pool_size=(8, 8),
    crop_pct=1.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    first_conv="stages.0.0",
    classifier="fc",
    num_classes=10,
)


@register_model(**_CFG)
def small_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, use_bam=False, **kwargs)


@register_model(**_CFG)
def bam_small_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, use_bam=True, **kwargs)
