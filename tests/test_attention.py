"""record_attention reads the maps a BAM computed, without changing the model."""

import pytest
import torch
from torch import nn

from tests.helpers import randomize_
from torch_bam import BAM, record_attention


def test_maps_match_the_gates_and_the_output():
    bam = randomize_(BAM(64)).eval()
    x = torch.randn(2, 64, 10, 10)
    with record_attention(bam) as maps:
        y = bam(x)
    m = maps[""]
    assert m.channel_logits.shape == (2, 64) and m.spatial_logits.shape == (2, 1, 10, 10)
    torch.testing.assert_close(m.channel_logits, bam.channel_att(x))
    torch.testing.assert_close(m.spatial_logits, bam.spatial_att(x))
    torch.testing.assert_close(y, x * (1 + m.gate))
    assert not m.gate.requires_grad


def test_product_gate():
    bam = randomize_(BAM(64, combine="product")).eval()
    x = torch.randn(2, 64, 6, 6)
    with record_attention(bam) as maps:
        y = bam(x)
    torch.testing.assert_close(y, x * (1 + maps[""].gate))


def test_names_in_a_network_and_hooks_removed():
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        BAM(32, reduction_ratio=8),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        BAM(64),
    ).eval()
    params_before = sum(p.numel() for p in net.parameters())
    with record_attention(net) as maps:
        net(torch.randn(2, 3, 16, 16))
    assert set(maps) == {"1", "4"}
    assert maps["1"].spatial_logits.shape[-2:] == (16, 16)
    assert maps["4"].spatial_logits.shape[-2:] == (8, 8)
    assert sum(p.numel() for p in net.parameters()) == params_before
    assert not net[1].channel_att._forward_hooks and not net[1].spatial_att._forward_hooks


def test_no_bam_in_model():
    with pytest.raises(ValueError, match="contains no BAM module.*add_bam"):
        with record_attention(nn.Conv2d(3, 3, 1)):
            pass
