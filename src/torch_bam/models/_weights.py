"""The published BAM weights, as tagged configurations (``bam_resnet50.ptcv_in1k``, ...).

Two sets of ImageNet-1k weights exist for BAM-ResNet-50, both trained in the official code's
layout: the stride of a downsampling bottleneck in its 3x3 conv, and the product combine
``1 + sigmoid(M_c * M_s)``. ``model_args`` holds those flags, so ``create_model`` builds the
network the weights were trained in. Accuracies are the ones their authors publish, not ours:
``torch-bam eval NAME --data imagefolder:PATH`` measures them on an ImageNet validation folder.
"""

from __future__ import annotations

from ._cfg import PretrainedCfg, register_pretrained_cfg

__all__ = ["OFFICIAL_LAYOUT"]

# The flags both weights need (torch_bam's defaults are the paper's: stride in the 1x1, sum).
OFFICIAL_LAYOUT = {"stride_in_3x3": True, "combine": "product"}

_BAM_PAPER = dict(
    paper_ids="arXiv:1807.06514",
    paper_name="BAM: Bottleneck Attention Module (Park, Woo, Lee and Kweon, BMVC 2018)",
    first_conv="conv1",
    classifier="fc",
)

# pytorchcv's model store (pytorchcv/models/common/model_metainfos.csv, pytorchcv 0.0.74):
# "bam_resnet50", 25,915,099 parameters, error field 0547 (the top-5 error, 5.47%), SHA-1
# a04adf3c..., release v0.0.499. Its loader fetches
# {repo}/releases/download/{tag}/{name}-{error}-{sha1[:8]}.pth.zip and checks the unzipped .pth
# against the full SHA-1. Its README publishes top-1 / top-5 errors of 20.91 / 5.47 for it, on
# torchvision's preprocessing (resize to 256, centre crop 224, bilinear).
register_pretrained_cfg(
    PretrainedCfg(
        architecture="bam_resnet50",
        tag="ptcv_in1k",
        url="https://github.com/osmr/imgclsmob/releases/download/v0.0.499/"
        "bam_resnet50-0547-a04adf3c.pth.zip",
        filename="bam_resnet50-0547-a04adf3c.pth",
        archive="zip",
        hash_sha1="a04adf3c93f56836509f66668aa90360c9688eb8",
        converter="pytorchcv",
        model_args=dict(OFFICIAL_LAYOUT),
        license="mit",
        description="BAM-ResNet-50, ImageNet-1k, from pytorchcv (trained in MXNet/Gluon by "
        "osmr/imgclsmob, converted to PyTorch)",
        origin_url="https://github.com/osmr/imgclsmob",
        published_top1=79.09,  # 100 - 20.91, pytorchcv's README
        published_top5=94.53,  # 100 - 5.47
        **_BAM_PAPER,
    )
)

# The official code's checkpoint: a file the user downloads by hand (Dropbox, no hash
# published). Its README: "ResNet50+BAM (trained for 90 epochs) ... ACC@1=76.860 ACC@5=93.416";
# its validation transform is Resize(256), CenterCrop(224), bilinear, ImageNet mean/std.
register_pretrained_cfg(
    PretrainedCfg(
        architecture="bam_resnet50",
        tag="official_in1k",
        url="",
        filename="RESNET50_IMAGENET_BAM_best.pth.tar",
        converter="official",
        model_args=dict(OFFICIAL_LAYOUT),
        license="mit",
        description="BAM-ResNet-50, ImageNet-1k, from the official code "
        "(Jongchan/attention-module), 90 epochs",
        origin_url="https://www.dropbox.com/s/esw0m8e3cjg7ex4/RESNET50_IMAGENET_BAM_best.pth.tar",
        published_top1=76.86,
        published_top5=93.416,
        notes=("linked from https://github.com/Jongchan/attention-module#resume-with-checkpoints",),
        **_BAM_PAPER,
    )
)
