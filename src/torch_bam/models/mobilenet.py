"""MobileNet (v1) for ImageNet, width 1.0 and 0.7, with BAM.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861.

The network is a stem (3x3/2 conv) and 13 depthwise-separable blocks; five of them have stride 2
(one right after the stem). We group the blocks into stages that end right before a stride-2
block, and put a BAM after each stage but the last: four BAMs, at 112x112 (64 channels at width
1.0), 56x56 (128), 28x28 (256) and 14x14 (512). That is BAM "before each downsampling", as in
the paper, and it gives the paper's +0.09M parameters. The width multiplier scales every
layer's channels, rounded down (``int(c * alpha)``).
"""

import torch
from torch import Tensor, nn

from ..bam import BAM
from ._interface import TimmInterface, check_head_args
from ._registry import register_pair

__all__ = ["MobileNetV1"]

# (output channels, stride) of each depthwise-separable block, grouped into stages.
_STAGES = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1, 1))


class MobileNetV1(TimmInterface, nn.Module):
    """MobileNet v1.

    Args:
        num_classes: outputs of the classifier.
        width_mult: the width multiplier alpha.
        use_bam: BAM after the first four stages (``bam1``..``bam4``).
        **bam_kwargs: passed to BAM.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        use_bam: bool = False,
        **bam_kwargs,
    ) -> None:
        super().__init__()
        check_head_args("MobileNetV1", num_classes, global_pool, drop_rate)
        if width_mult <= 0:
            raise ValueError(f"MobileNetV1: width_mult must be positive, got {width_mult}.")
        cin = int(32 * width_mult)
        self.stem = _conv_bn(in_chans, cin, 3, 2)
        levels = [(("stem",), cin, 2)]
        reduction = 2
        for i, stage in enumerate(_STAGES):
            blocks = []
            for cout, stride in stage:
                cout = int(cout * width_mult)
                blocks.append(_separable(cin, cout, stride))
                cin, reduction = cout, reduction * stride
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            names = (f"stage{i + 1}",)
            if i < len(_STAGES) - 1:
                self.add_module(f"bam{i + 1}", BAM(cin, **bam_kwargs) if use_bam else nn.Identity())
                names += (f"bam{i + 1}",)
            levels.append((names, cin, reduction))
        self._init_interface(cin, num_classes, global_pool, drop_rate, levels)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_checkpointed(x)
        x = self.stem(x)
        x = self.bam1(self.stage1(x))
        x = self.bam2(self.stage2(x))
        x = self.bam3(self.stage3(x))
        x = self.bam4(self.stage4(x))
        return self.stage5(x)

    def _group_matcher(self, coarse: bool) -> dict:
        stage = r"^stage(\d+)" if coarse else r"^stage(\d+)\.(\d+)"
        return dict(stem=r"^stem", blocks=[(stage, None), (r"^bam(\d+)", (99999,))])


IMAGENET = dict(pool_size=(7, 7), first_conv="stem.0", classifier="fc")
register_pair(MobileNetV1, "mobilenet_v1", "MobileNet v1, width 1.0 (ImageNet).", cfg=IMAGENET)
register_pair(
    MobileNetV1,
    "mobilenet_v1_0_7",
    "MobileNet v1, width 0.7 (ImageNet).",
    cfg=IMAGENET,
    width_mult=0.7,
)
