"""The paper's CIFAR networks (32x32 input, three stages), with BAM after stages 1 and 2.

- PreResNet-110: He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016,
  arXiv:1603.05027. Pre-activation basic blocks, 16/32/64 channels, 18 blocks per stage.
- WideResNet-28-k: Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016,
  arXiv:1605.07146. Pre-activation basic blocks, 16k/32k/64k channels, 4 blocks per stage.
- ResNeXt-29 8x64d: Xie et al., CVPR 2017, arXiv:1611.05431. Bottlenecks of cardinality 8,
  256/512/1024 output channels, 3 blocks per stage.

The CIFAR ResNet-50 (four stages) is in ``resnet.py``. The projection shortcuts of the
pre-activation nets take the pre-activated input, as in the WRN code; the same parameters and
FLOPs as taking the raw input.
"""

import torch
from torch import Tensor, nn

from ..bam import BAM
from ._interface import TimmInterface, check_head_args
from ._registry import register_pair
from .resnet import block_attention

__all__ = ["PreActResNet", "ResNeXtCifar"]


class PreActBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, dropout: float = 0.0, attn_layer=None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )
        self.se = block_attention(attn_layer, cout)  # timm's name, on the residual branch

    def forward(self, x: Tensor) -> Tensor:
        # Not in place: x itself is the identity shortcut.
        a = self.relu1(self.bn1(x).clone()) if self.shortcut is None else self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        if self.se is not None:
            out = self.se(out)
        return out + identity


class PreActResNet(TimmInterface, nn.Module):
    """Pre-activation ResNet for CIFAR: PreResNet and WideResNet.

    Args:
        blocks: basic blocks per stage.
        widths: channels of the three stages.
        num_classes: outputs of the classifier.
        dropout: between the two convs of a block (WRN's option; 0 in the BAM paper's table).
        use_bam: BAM after stages 1 and 2 (``bam1``, ``bam2``).
        block_args: to every block, as timm's ResNet: ``dict(attn_layer="se")`` (or ``"eca"``,
            ``"cbam"``) puts that module in every block.
        **bam_kwargs: passed to BAM.
    """

    def __init__(
        self,
        blocks: int,
        widths: tuple[int, int, int],
        num_classes: int = 100,
        dropout: float = 0.0,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        use_bam: bool = False,
        block_args: dict | None = None,
        **bam_kwargs,
    ) -> None:
        super().__init__()
        check_head_args("PreActResNet", num_classes, global_pool, drop_rate)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        cin = 16
        for i, w in enumerate(widths):
            stage = nn.Sequential(
                *[
                    PreActBlock(
                        cin if j == 0 else w,
                        w,
                        2 if i and not j else 1,
                        dropout,
                        **(block_args or {}),
                    )
                    for j in range(blocks)
                ]
            )
            cin = w
            self.add_module(f"layer{i + 1}", stage)
            if i < 2:
                self.add_module(f"bam{i + 1}", BAM(w, **bam_kwargs) if use_bam else nn.Identity())
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self._init_interface(
            cin,
            num_classes,
            global_pool,
            drop_rate,
            [
                (("conv1",), 16, 1),
                (("layer1", "bam1"), widths[0], 1),
                (("layer2", "bam2"), widths[1], 2),
                (("layer3", "bn", "relu"), widths[2], 4),  # pre-activation: the final BN, ReLU
            ],
        )

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_checkpointed(x)
        x = self.conv1(x)
        x = self.bam1(self.layer1(x))
        x = self.bam2(self.layer2(x))
        return self.relu(self.bn(self.layer3(x)))

    def _group_matcher(self, coarse: bool) -> dict:
        return _cifar_matcher("^conv1", coarse, tail=r"^bn")


class ResNeXtBlock(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        cardinality: int,
        width: int,
        stride_in_3x3: bool,
        attn_layer=None,
    ) -> None:
        super().__init__()
        s1, s3 = (1, stride) if stride_in_3x3 else (stride, 1)
        self.conv_reduce = nn.Conv2d(cin, width, 1, s1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_conv = nn.Conv2d(width, width, 3, s3, 1, groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, cout, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )
        self.se = block_attention(attn_layer, cout)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class ResNeXtCifar(TimmInterface, nn.Module):
    """ResNeXt-29 for CIFAR: 3x3 stem with 64 channels, three stages of bottlenecks.

    Args:
        cardinality, base_width: groups, and group width of the first stage (doubles per stage).
        widths: output channels of the three stages.
        stride_in_3x3: stride of a downsampling block in its 3x3 conv; by default it is in the
            first 1x1, as in the BAM paper's ResNets (4.98 GMACs; the 3x3 gives 5.39).
        use_bam: BAM after stages 1 and 2.
        block_args: to every block (``dict(attn_layer="se")``, as timm's ResNet).
    """

    def __init__(
        self,
        num_classes: int = 100,
        blocks: int = 3,
        cardinality: int = 8,
        base_width: int = 64,
        widths: tuple[int, int, int] = (256, 512, 1024),
        stride_in_3x3: bool = False,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        use_bam: bool = False,
        block_args: dict | None = None,
        **bam_kwargs,
    ) -> None:
        super().__init__()
        check_head_args("ResNeXtCifar", num_classes, global_pool, drop_rate)
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        cin = 64
        for i, w in enumerate(widths):
            inner = cardinality * base_width * 2**i
            stage = nn.Sequential(
                *[
                    ResNeXtBlock(
                        cin if j == 0 else w,
                        w,
                        2 if i and not j else 1,
                        cardinality,
                        inner,
                        stride_in_3x3,
                        **(block_args or {}),
                    )
                    for j in range(blocks)
                ]
            )
            cin = w
            self.add_module(f"layer{i + 1}", stage)
            if i < 2:
                self.add_module(f"bam{i + 1}", BAM(w, **bam_kwargs) if use_bam else nn.Identity())
        self._init_interface(
            cin,
            num_classes,
            global_pool,
            drop_rate,
            [
                (("conv1", "bn1", "relu"), 64, 1),
                (("layer1", "bam1"), widths[0], 1),
                (("layer2", "bam2"), widths[1], 2),
                (("layer3",), widths[2], 4),
            ],
        )

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_checkpointed(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bam1(self.layer1(x))
        x = self.bam2(self.layer2(x))
        return self.layer3(x)

    def _group_matcher(self, coarse: bool) -> dict:
        return _cifar_matcher("^conv1|^bn1", coarse)


def _cifar_matcher(stem: str, coarse: bool, tail: str | None = None) -> dict:
    """Stem, blocks of ``layer1``..``layer3`` (a BAM with its stage's last block), ``tail``
    (a final norm) with the last block."""
    stage = r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"
    blocks = [(stage, None), (r"^bam(\d+)", (99999,))]
    if tail:
        blocks.append((tail, (99999,)))
    return dict(stem=stem, blocks=blocks)


CIFAR100 = dict(
    input_size=(3, 32, 32),
    pool_size=(8, 8),
    crop_pct=1.0,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    first_conv="conv1",
    classifier="fc",
)


register_pair(
    PreActResNet,
    "preresnet110",
    "PreResNet-110 (CIFAR).",
    100,
    CIFAR100,
    blocks=18,
    widths=(16, 32, 64),
)
register_pair(
    PreActResNet,
    "wrn28_8",
    "WideResNet-28-8 (CIFAR).",
    100,
    CIFAR100,
    blocks=4,
    widths=(128, 256, 512),
)
register_pair(
    PreActResNet,
    "wrn28_10",
    "WideResNet-28-10 (CIFAR).",
    100,
    CIFAR100,
    blocks=4,
    widths=(160, 320, 640),
)
register_pair(ResNeXtCifar, "resnext29_8x64d", "ResNeXt-29 8x64d (CIFAR).", 100, CIFAR100)
