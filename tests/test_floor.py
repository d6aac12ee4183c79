"""torch_bam.floor: a BAM network's floor runs each block's convolutions and one gate pass."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_bam import BAM, create_model
from torch_bam.floor import BAMFloor, bam_floor
from torch_bam.flops import count_macs
from torch_bam.functional import bam_gate_ref


def _convs(block):
    return [m for m in block.spatial_att.gate_s if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("channels", [32, 256])  # gate widths 2 and 16
def test_floor_is_the_convolutions_then_one_gate_pass(channels, memory_format):
    torch.manual_seed(0)
    block = BAM(channels).to(memory_format=memory_format)
    x = torch.randn(2, channels, 9, 7).contiguous(memory_format=memory_format)
    s = x
    for conv in _convs(block):  # the plain convs: no BatchNorm, no ReLU
        s = F.conv2d(s, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    expected = bam_gate_ref(x, torch.zeros(2, channels), s)
    with torch.no_grad():
        y = BAMFloor(block)(x)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_bam_floor_replaces_every_block_and_leaves_the_model_alone():
    model = create_model("bam_small_cnn")
    floor = bam_floor(model)
    bams = [m for m in model.modules() if isinstance(m, BAM)]
    floors = [m for m in floor.modules() if isinstance(m, BAMFloor)]
    assert len(bams) == len(floors) == 2
    assert not any(isinstance(m, BAM) for m in floor.modules())
    assert all(isinstance(m, BAM) for m in model.bams[:2])  # the original is unchanged
    # The floor shares no tensors with the model: a copy.
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not ptrs & {p.data_ptr() for p in floor.parameters()}


def test_floor_macs_are_the_blocks_convolutions():
    # The floor's extra MACs over the network without BAM are exactly its blocks' convs.
    size = (1, 3, 32, 32)
    base = count_macs(create_model("small_cnn"), size)
    bam_net = create_model("bam_small_cnn")
    floor = count_macs(bam_floor(bam_net), size)
    conv_macs = 0
    for block, side in zip(bam_net.bams[:2], (32, 16), strict=True):
        conv_macs += count_macs(nn.Sequential(*_convs(block)), (1, block.channels, side, side))
    assert floor - base == conv_macs
    assert base < floor < count_macs(bam_net, size)  # the MLP is left out


def test_floor_trains():
    torch.manual_seed(0)
    floor = bam_floor(create_model("bam_small_cnn")).train()
    x = torch.randn(4, 3, 16, 16)
    F.cross_entropy(floor(x), torch.tensor([0, 1, 2, 3])).backward()
    for block in (m for m in floor.modules() if isinstance(m, BAMFloor)):
        assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in block.convs)


def test_bad_input_says_what_to_pass():
    with pytest.raises(ValueError, match="has no torch_bam.BAM block"):
        bam_floor(create_model("small_cnn"))
    with pytest.raises(TypeError, match="needs a torch_bam.BAM block"):
        BAMFloor(nn.Conv2d(3, 3, 1))
