"""BAM in detectors: torchvision's Faster R-CNN, RetinaNet and Mask R-CNN with an FPN, a timm
features_only backbone, and torch-bam's own, training with one and two images per batch.

Tiny detectors (ResNet-18 + FPN, 64 px images) on synthetic boxes: a bright square on noise.
"""

import re

import pytest
import torch

from tests.docs.markdown_blocks import block_after
from torch_bam import BAM, add_bam, create_model

torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet  # noqa: E402
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone  # noqa: E402
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7  # noqa: E402

SIZE = 64
SMALL = dict(min_size=SIZE, max_size=SIZE)  # no upscaling to torchvision's 800 px
NUM_CLASSES = 4


def synthetic_batch(n, seed=0, masks=False):
    """``n`` images with one bright square each, and its box and label (1..3)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        image = 0.1 * torch.rand(3, SIZE, SIZE, generator=g)
        side = int(torch.randint(16, 33, (1,), generator=g))
        x0, y0 = torch.randint(0, SIZE - side, (2,), generator=g).tolist()
        image[:, y0 : y0 + side, x0 : x0 + side] = 1.0
        target = {
            "boxes": torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32),
            "labels": torch.randint(1, NUM_CLASSES, (1,), generator=g),
        }
        if masks:
            mask = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
            mask[:, y0 : y0 + side, x0 : x0 + side] = 1
            target["masks"] = mask
        images.append(image)
        targets.append(target)
    return images, targets


def bam_params(model):
    return [p for m in model.modules() if isinstance(m, BAM) for p in m.parameters()]


def train_steps(detector, batch_sizes, masks=False):
    """A few SGD steps; every loss finite and every BAM parameter with a gradient each step."""
    detector.train()
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9)
    for step, n in enumerate(batch_sizes):
        images, targets = synthetic_batch(n, seed=step, masks=masks)
        optimizer.zero_grad(set_to_none=True)
        losses = detector(images, targets)
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        loss.backward()
        grads = [p.grad for p in bam_params(detector)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        optimizer.step()


def faster_rcnn(trainable_layers=3, norm_layer=FrozenBatchNorm2d):
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=trainable_layers,
        norm_layer=norm_layer,
    )
    return FasterRCNN(
        backbone,
        num_classes=NUM_CLASSES,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
        **SMALL,
    )


def test_faster_rcnn_with_bam_trains_with_one_and_two_images_and_keeps_baseline_keys():
    torch.manual_seed(0)
    detector = faster_rcnn()
    baseline = {k: v.clone() for k, v in detector.state_dict().items()}
    # The baseline weights load before add_bam (strictly) ...
    fresh = faster_rcnn()
    fresh.load_state_dict(baseline, strict=True)

    add_bam(detector.backbone, torch.randn(1, 3, SIZE, SIZE))
    report = detector.backbone.bam_report
    assert [p.path for p in report] == ["body.layer1", "body.layer2", "body.layer3"]
    # torchvision's detection backbone has frozen BatchNorm: so do the BAMs.
    assert {p.norm for p in report} == {"frozen"}
    # ... and after it, with only the BAM keys missing.
    add_bam(fresh.backbone, torch.randn(1, 3, SIZE, SIZE))
    missing, unexpected = fresh.load_state_dict(baseline, strict=False)
    assert not unexpected
    assert missing and all(".bam." in k for k in missing)
    assert set(missing) == {k for k in fresh.state_dict() if ".bam." in k}
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in baseline.items())

    train_steps(detector, [1, 2, 1])
    detector.eval()
    with torch.no_grad():
        out = detector(synthetic_batch(2, seed=9)[0])
    assert len(out) == 2
    for d in out:
        assert set(d) == {"boxes", "labels", "scores"}
        assert d["boxes"].shape[1:] == (4,) and len(d["labels"]) == len(d["scores"])


def test_detector_with_trainable_batchnorm_trains_with_one_image():
    # Every layer trainable, plain BatchNorm: BAM keeps BatchNorm; one image still trains.
    detector = faster_rcnn(trainable_layers=5, norm_layer=torch.nn.BatchNorm2d)
    add_bam(detector.backbone, torch.randn(1, 3, SIZE, SIZE))
    assert {p.norm for p in detector.backbone.bam_report} == {"batch"}
    train_steps(detector, [1, 2])


def test_retinanet_and_mask_rcnn_one_image_step():
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    retina = RetinaNet(backbone, num_classes=NUM_CLASSES, **SMALL)
    add_bam(retina.backbone, torch.randn(1, 3, SIZE, SIZE))
    assert len(retina.backbone.bam_report) == 3
    train_steps(retina, [1])

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    mask = MaskRCNN(
        backbone,
        num_classes=NUM_CLASSES,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
        **SMALL,
    )
    add_bam(mask.backbone, torch.randn(1, 3, SIZE, SIZE))
    train_steps(mask, [1], masks=True)


class FeaturesBackbone(torch.nn.Module):
    """A features_only network and an FPN, as a torchvision detector's backbone."""

    def __init__(self, body, channels):
        super().__init__()
        self.body = body
        # Four levels and a max-pooled fifth: the five of torchvision's default anchors.
        self.fpn = FeaturePyramidNetwork(channels, 64, extra_blocks=LastLevelMaxPool())
        self.out_channels = 64

    def forward(self, x):
        return self.fpn({str(i): m for i, m in enumerate(self.body(x))})


def test_timm_and_torch_bam_features_only_backbones_train_with_one_image():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    timm_body = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    add_bam(timm_body, torch.randn(1, 3, SIZE, SIZE))
    assert [p.path for p in timm_body.bam_report] == ["layer1", "layer2", "layer3"]
    ours = create_model("bam_resnet18", features_only=True, out_indices=(1, 2, 3, 4))
    for body in (timm_body, ours):
        backbone = FeaturesBackbone(body, body.feature_info.channels())
        detector = FasterRCNN(
            backbone,
            num_classes=NUM_CLASSES,
            rpn_batch_size_per_image=32,
            box_batch_size_per_image=32,
            **SMALL,
        )
        train_steps(detector, [1])


def substitute(code, old, new):
    """The test's small stand-in for one piece of the guide's code (which must be there)."""
    assert code.count(old) == 1, old
    return code.replace(old, new)


def test_guide_detection_recipe_runs(tmp_path, monkeypatch):
    code = block_after("<!-- test: detection recipe")
    # No download, a small backbone and small images; the rest as written.
    code = substitute(code, 'weights="DEFAULT"', "weights=None")
    code = substitute(code, '"resnet50"', '"resnet18"')
    code = substitute(code, "num_classes=91)", "num_classes=91, min_size=64, max_size=64)")
    code = re.sub(r"torch\.rand\(3, \d+, \d+\)", "torch.rand(3, 64, 64)", code)
    monkeypatch.chdir(tmp_path)
    baseline = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    torch.save(FasterRCNN(baseline, num_classes=91).state_dict(), "faster_rcnn_baseline.pth")
    scope: dict = {}
    exec(code, scope)
    detector = scope["detector"]
    assert {p.norm for p in detector.backbone.bam_report} == {"frozen"}
    assert scope["unexpected"] == [] and all(".bam." in k for k in scope["missing"])
    assert all(p.grad is not None for p in bam_params(detector))


def test_guide_features_only_recipe_runs():
    scope: dict = {}
    exec(block_after("<!-- test: features_only recipe"), scope)
    body, pyramid = scope["body"], scope["pyramid"]
    assert body.feature_info.channels() == [256, 512, 1024, 2048]
    assert body.feature_info.reduction() == [4, 8, 16, 32]
    assert sum(isinstance(m, BAM) for m in body.modules()) == 3
    assert [p.shape[1] for p in pyramid.values()] == [256] * 4
