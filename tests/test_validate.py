"""Every bad input gets an error that names the cause and the fix."""

import pytest
import torch

from torch_bam import BAM, ChannelGate, SpatialGate, bam_gate


@pytest.mark.parametrize("cls", [BAM, ChannelGate, SpatialGate])
def test_zero_width_bottleneck(cls):
    with pytest.raises(ValueError, match=r"8 // 16 = 0.*zero-width.*reduction_ratio <= 8"):
        cls(8)


def test_smallest_valid_width_builds():
    assert BAM(16).spatial_att.gate_s.gate_s_conv_reduce0.out_channels == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(channels=0), "channels"),
        (dict(channels=-4), "channels"),
        (dict(channels=64, reduction_ratio=0), "reduction_ratio"),
        (dict(channels=64, dilation=0), "dilation"),
        (dict(channels=64, num_dilated_convs=-1), "num_dilated_convs"),
        (dict(channels=64, channel_mlp_layers=0), "channel_mlp_layers"),
    ],
)
def test_non_positive_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer.*Use {name} >= 1"):
        BAM(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(channels=64.0), "channels"),
        (dict(channels="64"), "channels"),
        (dict(channels=True), "channels"),
        (dict(channels=64, reduction_ratio=1.5), "reduction_ratio"),
        (dict(channels=64, dilation=None), "dilation"),
    ],
)
def test_non_integer_arguments(kwargs, name):
    with pytest.raises(TypeError, match=rf"{name} must be a positive integer, got .*Pass an int"):
        BAM(**kwargs)


def test_unknown_combine():
    with pytest.raises(ValueError, match=r"unknown combine='mean'.*'sum'.*'max'.*'product'"):
        BAM(64, combine="mean")
    with pytest.raises(ValueError, match=r"unknown combine"):
        bam_gate(torch.randn(1, 2, 3, 3), torch.randn(1, 2), torch.randn(1, 1, 3, 3), "mean")


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_dtype_for_weights(dtype):
    with pytest.raises(TypeError, match=r"not a floating-point type.*dtype=torch.float32"):
        BAM(64, dtype=dtype)


def test_integer_input():
    bam = BAM(64).eval()
    with pytest.raises(TypeError, match=r"floating-point input, got torch.uint8.*x.float\(\)"):
        bam(torch.zeros(2, 64, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize(
    "shape, hint",
    [((64, 8, 8), "x.unsqueeze\\(0\\)"), ((2, 64), ""), ((1, 2, 64, 8, 8), "")],
)
def test_input_not_4d(shape, hint):
    with pytest.raises(
        ValueError, match=rf"4-D input \[B, C, H, W\], got a {len(shape)}-D.*{hint}"
    ):
        BAM(64).eval()(torch.randn(shape))


def test_wrong_channel_count():
    with pytest.raises(ValueError, match=r"built for 64 channels but the input has 32.*BAM\(32\)"):
        BAM(64).eval()(torch.randn(2, 32, 8, 8))


def test_one_1x1_map_in_training():
    # A batch of one trains (tests/test_bam.py); one 1x1 map leaves the spatial gate's
    # BatchNorm2d a single value per channel, so it is refused with the fixes named.
    bam = BAM(64).train()
    with pytest.raises(ValueError, match=r"one 1x1 map in training mode.*norm='frozen'.*eval\(\)"):
        bam(torch.randn(1, 64, 1, 1))
    # The suggested fixes work.
    assert BAM(64, norm="frozen").train()(torch.randn(1, 64, 1, 1)).shape == (1, 64, 1, 1)
    assert bam.eval()(torch.randn(1, 64, 1, 1)).shape == (1, 64, 1, 1)


def test_dtype_mismatch_between_input_and_weights():
    with pytest.raises(
        TypeError, match=r"weights are torch.float32 but the input is torch.float64"
    ):
        BAM(64).eval()(torch.randn(2, 64, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", ["float32", float, None.__class__])
def test_dtype_that_is_not_a_torch_dtype_names_torch_float32(dtype):
    with pytest.raises(TypeError, match=r"not a torch\.dtype.*dtype=torch\.float32"):
        BAM(64, dtype=dtype)
