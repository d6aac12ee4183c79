"""ResNet, WideResNet-18 and ResNeXt-50 for ImageNet, and ResNet-50 for CIFAR, with BAM.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385;
Xie et al., "Aggregated Residual Transformations" (ResNeXt), CVPR 2017, arXiv:1611.05431.

ResNet v1, as in the BAM paper: a downsampling bottleneck has its stride in the first 1x1 conv
(ResNet-50: 3.86 GMACs). ``stride_in_3x3=True`` gives torchvision's "v1.5" (stride in the 3x3
conv, 4.09 GMACs), which the official BAM code also uses. Module names follow torchvision's, and
the BAMs are ``bam1``, ``bam2``, ``bam3`` after ``layer1``..``layer3`` as in the official code
(``nn.Identity`` in the baselines), so both kinds of checkpoint load.
"""

import torch
from torch import Tensor, nn

from ..bam import BAM
from ._interface import TimmInterface, check_head_args
from ._registry import register_pair

__all__ = ["ResNet"]


def block_attention(attn_layer, channels: int):
    """timm's ``attn_layer`` of a residual block (``"se"``, ``"eca"``, ``"cbam"``, ``"bam"``,
    or a class), on its residual branch before the shortcut is added; None for none."""
    if attn_layer is None:
        return None
    if isinstance(attn_layer, str):
        from ..peers import attention_module

        return attention_module(attn_layer, channels)
    return attn_layer(channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, attn_layer=None, **_):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.se = block_attention(attn_layer, planes)  # timm's name and place for it

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes,
        planes,
        stride=1,
        downsample=None,
        groups=1,
        base_width=64,
        stride_in_3x3=False,
        attn_layer=None,
    ):
        super().__init__()
        width = int(planes * base_width / 64) * groups
        s1, s3 = (1, stride) if stride_in_3x3 else (stride, 1)
        self.conv1 = nn.Conv2d(inplanes, width, 1, s1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, s3, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.se = block_attention(attn_layer, planes * 4)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class ResNet(TimmInterface, nn.Module):
    """ResNet with an optional BAM after each of the first three stages.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        layers: blocks per stage.
        num_classes: outputs of the classifier.
        widths: channels of the four stages (before the bottleneck's expansion).
        groups, width_per_group: ResNeXt cardinality and width.
        stride_in_3x3: torchvision's v1.5 if True; the paper's v1 (stride in the 1x1) if False.
        stem: ``"imagenet"`` (7x7/2 conv, 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, no pool).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        global_pool: ``"avg"``, ``"max"``, or ``""`` (no pooling, with ``num_classes=0``).
        use_bam: insert BAM after ``layer1``, ``layer2`` and ``layer3``.
        block_args: to every residual block, as timm's ResNet: ``dict(attn_layer="se")`` puts
            an SE (or ``"eca"``, ``"cbam"``: timm's modules) in every block.
        **bam_kwargs: passed to BAM (``reduction_ratio``, ``combine``, ...).
    """

    def __init__(
        self,
        block: str,
        layers: tuple[int, ...],
        num_classes: int = 1000,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_3x3: bool = False,
        stem: str = "imagenet",
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        use_bam: bool = False,
        block_args: dict | None = None,
        **bam_kwargs,
    ) -> None:
        super().__init__()
        check_head_args("ResNet", num_classes, global_pool, drop_rate)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet: block must be 'basic' or 'bottleneck', got {block!r}.")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {stem!r}.")
        block_cls = BasicBlock if block == "basic" else Bottleneck
        kw = dict(groups=groups, base_width=width_per_group, stride_in_3x3=stride_in_3x3)
        kw.update(block_args or {})
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        for i, (w, n) in enumerate(zip(widths, layers, strict=True)):
            self.add_module(
                f"layer{i + 1}", self._make_layer(block_cls, w, n, 1 if i == 0 else 2, kw)
            )
            if i < 3:
                c = w * block_cls.expansion
                self.add_module(f"bam{i + 1}", BAM(c, **bam_kwargs) if use_bam else nn.Identity())
        # Stride of the stem's conv, and of what follows it (the max-pool) before layer1.
        s, p = (1, 1) if stem == "cifar" else (2, 4)
        expansion = block_cls.expansion
        self._init_interface(
            self.inplanes,
            num_classes,
            global_pool,
            drop_rate,
            [
                (("conv1", "bn1", "relu"), 64, s),
                (("maxpool", "layer1", "bam1"), widths[0] * expansion, p),
                (("layer2", "bam2"), widths[1] * expansion, 2 * p),
                (("layer3", "bam3"), widths[2] * expansion, 4 * p),
                (("layer4",), widths[3] * expansion, 8 * p),
            ],
        )
        # Kaiming init for the backbone's convs; attention modules keep their own init.
        attention = [b for b in self.modules() if isinstance(b, BAM)]
        attention += [b.se for b in self.modules() if isinstance(b, (BasicBlock, Bottleneck))]
        in_bam = {id(m) for a in attention if a is not None for m in a.modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in in_bam:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride, kw) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map, unpooled (``[B, num_features, H/32, W/32]``)."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_checkpointed(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.bam1(self.layer1(x))
        x = self.bam2(self.layer2(x))
        x = self.bam3(self.layer3(x))
        return self.layer4(x)

    def _group_matcher(self, coarse: bool) -> dict:
        stage = r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"
        return dict(stem=r"^conv1|^bn1|^maxpool", blocks=[(stage, None), (r"^bam(\d+)", (99999,))])


# Default configurations (ImageNet mean and std are PretrainedCfg's defaults).
IMAGENET = dict(first_conv="conv1", classifier="fc")
CIFAR100 = dict(
    input_size=(3, 32, 32),
    crop_pct=1.0,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    first_conv="conv1",
    classifier="fc",
)


def _pair(name: str, doc: str, **model_args) -> None:
    cifar = model_args.get("stem") == "cifar"
    cfg = dict(CIFAR100, pool_size=(4, 4)) if cifar else dict(IMAGENET, pool_size=(7, 7))
    register_pair(ResNet, name, doc, 100 if cifar else 1000, cfg, **model_args)


_pair("resnet18", "ResNet-18 (ImageNet).", block="basic", layers=(2, 2, 2, 2))
_pair("resnet34", "ResNet-34 (ImageNet).", block="basic", layers=(3, 4, 6, 3))
_pair("resnet50", "ResNet-50 v1 (ImageNet).", block="bottleneck", layers=(3, 4, 6, 3))
_pair("resnet101", "ResNet-101 v1 (ImageNet).", block="bottleneck", layers=(3, 4, 23, 3))
_pair("resnet152", "ResNet-152 v1 (ImageNet).", block="bottleneck", layers=(3, 8, 36, 3))
_pair(
    "wrn18_w1_5",
    "WideResNet-18, widen 1.5 (ImageNet).",
    block="basic",
    layers=(2, 2, 2, 2),
    widths=(96, 192, 384, 768),
)
_pair(
    "wrn18_w2",
    "WideResNet-18, widen 2.0 (ImageNet).",
    block="basic",
    layers=(2, 2, 2, 2),
    widths=(128, 256, 512, 1024),
)
_pair(
    "resnext50_32x4d",
    "ResNeXt-50 32x4d v1 (ImageNet).",
    block="bottleneck",
    layers=(3, 4, 6, 3),
    groups=32,
    width_per_group=4,
)
_pair(
    "cifar_resnet50",
    "ResNet-50 for CIFAR: 3x3 stem, no max-pool (num_classes default 100).",
    block="bottleneck",
    layers=(3, 4, 6, 3),
    stem="cifar",
)
