"""torch_bam.cpu.layers: the spatial gate's CPU tricks compute what the plain layers compute
(the final 1x1 as a matmul: tests/test_bam.py::test_final_1x1_as_matmul_equals_the_conv)."""

import pytest
import torch
import torch.nn.functional as F

from torch_bam.cpu.layers import narrow, narrow_layout, reduce_1x1

CL = torch.channels_last


@pytest.mark.parametrize("hidden", [4, 16])  # a narrow gate and a wide one
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
def test_reduce_1x1_equals_the_conv(hidden, layout, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, 5, 7, dtype=torch.float64, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    w = torch.randn(hidden, 32, 1, 1, dtype=torch.float64, generator=gen)
    b = torch.randn(hidden, dtype=torch.float64, generator=gen) if bias else None
    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_()
    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_()
    out, ref = reduce_1x1(x1, w1, b), F.conv2d(x2, w2, b)
    torch.testing.assert_close(out, ref)
    if layout == "nchw":  # the matmul's own layout: NCHW for narrow gates (see narrow)
        assert out.is_contiguous(memory_format=torch.contiguous_format if narrow(hidden) else CL)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    for a, e in zip(torch.autograd.grad(out, (x1, w1), g), torch.autograd.grad(ref, (x2, w2), g),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, e)


def test_narrow_maps_are_nchw_in_cpu_training_only():
    narrow_map = torch.randn(2, 8, 4, 4).contiguous(memory_format=CL)
    wide_map = torch.randn(2, 16, 4, 4).contiguous(memory_format=CL)
    assert narrow_layout(narrow_map, training=True).is_contiguous()
    assert narrow_layout(narrow_map, training=False) is narrow_map
    assert narrow_layout(wide_map, training=True) is wide_map
    off_cpu = narrow_map.to("meta")
    assert narrow_layout(off_cpu, training=True) is off_cpu
