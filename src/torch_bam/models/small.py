"""A small CNN for quick runs on a CPU (demo, tests), as a baseline and with BAM."""

from torch import nn

from ..bam import BAM
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


class SmallCNN(nn.Module):
    """Three conv stages (32, 64, 128 channels), max-pool between them, BAM before each pool."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, use_bam: bool = False, **bam_kwargs
    ):
        super().__init__()
        widths = (32, 64, 128)
        bam_kwargs.setdefault("reduction_ratio", 8)
        self.stages = nn.ModuleList()
        self.bams = nn.ModuleList()
        cin = in_chans
        for i, w in enumerate(widths):
            self.stages.append(_stage(cin, w))
            last = i == len(widths) - 1
            self.bams.append(BAM(w, **bam_kwargs) if use_bam and not last else nn.Identity())
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)
        )

    def forward(self, x):
        for i, (stage, bam) in enumerate(zip(self.stages, self.bams, strict=True)):
            x = bam(stage(x))
            if i < len(self.stages) - 1:
                x = self.pool(x)
        return self.head(x)


@register_model
def small_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, use_bam=False, **kwargs)


@register_model
def bam_small_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, use_bam=True, **kwargs)
