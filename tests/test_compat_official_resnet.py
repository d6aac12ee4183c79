"""Whole-network official checkpoints: the official BAM-ResNet's weights in torch_bam's."""

import io

import pytest
import torch
from torch import nn

import torch_bam
from tests.helpers import randomize_
from tests.reference.official_resnet import ResidualNet
from torch_bam.compat import load_official_checkpoint, official_bam_resnet


@pytest.mark.parametrize("depth", [18, 50])
def test_official_resnet_checkpoint_round_trip(depth):
    """A whole official BAM-ResNet checkpoint (DataParallel, {'state_dict': ...}) loads and
    gives the official network's outputs."""
    official = randomize_(ResidualNet(depth, num_classes=10), seed=depth).eval()
    buffer = io.BytesIO()
    torch.save({"epoch": 90, "state_dict": nn.DataParallel(official).state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in checkpoint["state_dict"])

    ours = official_bam_resnet(depth, num_classes=10, checkpoint=checkpoint).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-4)


def test_official_checkpoint_needs_product():
    with pytest.raises(ValueError, match="combine='product'"):
        load_official_checkpoint(
            torch_bam.create_model("bam_resnet18", stride_in_3x3=True),
            ResidualNet(18).state_dict(),
        )


def test_empty_checkpoint_says_it_holds_no_weights():
    """An empty {'state_dict': {}} is one line naming the cause, not a dump of every key."""
    with pytest.raises(ValueError, match="holds no weights") as error:
        official_bam_resnet(50, checkpoint={"state_dict": {}})
    assert len(str(error.value)) < 400 and "\n" not in str(error.value)


def test_official_weights_refused_by_the_paper_layout():
    """Official weights load into a stride-in-1x1 network without a shape error, yet give other
    logits: the loader refuses such a network instead."""
    official = randomize_(ResidualNet(50, num_classes=10), seed=1).eval()
    wrong = torch_bam.create_model("bam_resnet50", num_classes=10, combine="product")
    with pytest.raises(ValueError, match="stride_in_3x3=True") as error:
        load_official_checkpoint(wrong, official.state_dict())
    assert "layer2.0.conv1" in str(error.value)
    # What the check prevents: the same weights, loaded by hand, give other outputs.
    from torch_bam.compat import convert_official_state_dict

    wrong.load_state_dict(convert_official_state_dict(official.state_dict()))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(wrong.eval()(x), official(x), rtol=1e-2, atol=1e-3)


def test_mismatched_depth_is_one_line():
    official = ResidualNet(18, num_classes=10)
    with pytest.raises(ValueError, match="do not fit the model") as error:
        official_bam_resnet(34, num_classes=10, checkpoint=official.state_dict())
    assert "\n" not in str(error.value) and len(str(error.value)) < 600


@pytest.mark.parametrize("depth,classes", [(18, 10), (50, 100)])
def test_official_cifar_networks(depth, classes):
    official = randomize_(ResidualNet(depth, classes, f"CIFAR{classes}"), seed=depth).eval()
    ours = official_bam_resnet(
        depth, checkpoint=official.state_dict(), dataset=f"cifar{classes}"
    ).eval()
    assert ours.fc.out_features == classes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = official(x)  # random BN statistics through 50 layers: large logits
        atol = 1e-5 * expected.abs().max().item()
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=atol)


def test_cifar_checkpoint_into_imagenet_network_names_the_dataset():
    official = ResidualNet(18, 100, "CIFAR100")
    with pytest.raises(ValueError, match="dataset='cifar100'"):
        official_bam_resnet(18, num_classes=100, checkpoint=official.state_dict())
    with pytest.raises(ValueError, match="dataset must be"):
        official_bam_resnet(18, dataset="svhn")
