"""The BAM paper's parameter and GFLOPs numbers (Tables 3-5), by registered model name.

Copied from the paper (see docs/PAPER_NOTES.md of the project): parameters in millions, GFLOPs
as multiply-accumulates for one image at ``size`` x ``size``.
"""

from typing import NamedTuple

__all__ = ["PAPER", "PaperRow"]


class PaperRow(NamedTuple):
    network: str  # as the paper names it
    dataset: str
    size: int
    params_m: float
    gmacs: float
    bam_params_m: float
    bam_gmacs: float


PAPER: dict[str, PaperRow] = {
    "cifar_resnet50": PaperRow("ResNet-50", "CIFAR-100", 32, 23.71, 1.22, 24.07, 1.25),
    "preresnet110": PaperRow("PreResNet-110", "CIFAR-100", 32, 1.73, 0.245, 1.73, 0.246),
    "wrn28_8": PaperRow("WideResNet-28 (w=8)", "CIFAR-100", 32, 23.40, 3.36, 23.42, 3.37),
    "wrn28_10": PaperRow("WideResNet-28 (w=10)", "CIFAR-100", 32, 36.54, 5.24, 36.57, 5.25),
    "resnext29_8x64d": PaperRow("ResNeXt-29 8x64d", "CIFAR-100", 32, 34.52, 4.99, 34.61, 5.00),
    "resnet18": PaperRow("ResNet-18", "ImageNet-1K", 224, 11.69, 1.81, 11.71, 1.82),
    "resnet50": PaperRow("ResNet-50", "ImageNet-1K", 224, 25.56, 3.86, 25.92, 3.94),
    "resnet101": PaperRow("ResNet-101", "ImageNet-1K", 224, 44.55, 7.57, 44.91, 7.65),
    "wrn18_w1_5": PaperRow(
        "WideResNet-18 (widen 1.5)", "ImageNet-1K", 224, 25.88, 3.87, 25.93, 3.88
    ),
    "wrn18_w2": PaperRow("WideResNet-18 (widen 2.0)", "ImageNet-1K", 224, 45.62, 6.70, 45.71, 6.72),
    "resnext50_32x4d": PaperRow("ResNeXt-50 (32x4d)", "ImageNet-1K", 224, 25.03, 3.77, 25.39, 3.85),
    "mobilenet_v1": PaperRow("MobileNet", "ImageNet-1K", 224, 4.23, 0.569, 4.32, 0.589),
    "mobilenet_v1_0_7": PaperRow(
        "MobileNet (alpha 0.7)", "ImageNet-1K", 224, 2.30, 0.283, 2.34, 0.292
    ),
}
