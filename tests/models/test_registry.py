"""The model registry."""

import pytest
import torch

import torch_bam
from torch_bam import BAM


def test_small_models_registered_and_run():
    assert {"small_cnn", "bam_small_cnn"} <= set(torch_bam.list_models())
    base = torch_bam.create_model("small_cnn", num_classes=7)
    bam = torch_bam.create_model("bam_small_cnn", num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    assert base(x).shape == bam(x).shape == (2, 7)
    blocks = [m for m in bam.modules() if isinstance(m, BAM)]
    assert [b.channels for b in blocks] == [32, 64]
    extra = sum(p.numel() for p in bam.parameters()) - sum(p.numel() for p in base.parameters())
    assert extra == sum(p.numel() for b in blocks for p in b.parameters())


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown model 'bam_smal_cnn'.*'bam_small_cnn'"):
        torch_bam.create_model("bam_smal_cnn")


def test_list_models_pattern():
    assert torch_bam.list_models("bam_*") == sorted(
        n for n in torch_bam.list_models() if n.startswith("bam_")
    )
