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
