"""Weights from the official code load into torch_bam and give the same outputs."""

import pytest
import torch

from tests.helpers import randomize_
from tests.reference import official_bam
from torch_bam import BAM
from torch_bam.compat import convert_official_state_dict, load_official_bam


@pytest.mark.parametrize("num_layers", [1, 2])
def test_official_block_round_trip(num_layers):
    off = randomize_(official_bam.BAM(64, num_layers=num_layers), seed=4).eval()
    bam = load_official_bam(off.state_dict()).eval()
    assert bam.combine == "product" and bam.channel_mlp_layers == num_layers
    x = torch.randn(2, 64, 9, 9)
    torch.testing.assert_close(bam(x), off(x), rtol=1e-5, atol=1e-6)


def test_convert_renames_channel_gate_keys_only():
    sd = official_bam.BAM(64).state_dict()
    out = convert_official_state_dict(sd)
    assert "channel_att.gate_c.0.weight" in out
    assert "channel_att.gate_c.1.running_var" in out
    assert "channel_att.gate_c.3.bias" in out
    assert "spatial_att.gate_s.gate_s_conv_reduce0.weight" in out
    assert not any("gate_c_" in k for k in out)
    assert len(out) == len(sd)
    BAM(64, combine="product").load_state_dict(out, strict=True)


def test_dataparallel_prefix_and_nested_blocks():
    net = torch.nn.Module()
    net.bam1 = official_bam.BAM(64)
    net.bam2 = official_bam.BAM(128, num_layers=2)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    out = convert_official_state_dict(sd)
    ours = torch.nn.Module()
    ours.bam1 = BAM(64, combine="product")
    ours.bam2 = BAM(128, combine="product", channel_mlp_layers=2)
    ours.load_state_dict(out, strict=True)
    assert "bam2.channel_att.gate_c.6.weight" in out  # final Linear after two hidden layers


def test_load_official_bam_rejects_other_weights():
    with pytest.raises(KeyError, match="not one BAM block's weights"):
        load_official_bam({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(TypeError, match="expects a state_dict mapping"):
        convert_official_state_dict([1, 2])
