"""Folding BatchNorm for inference, and the in-place inference option of BAM."""

import copy

import pytest
import torch
from torch import nn

from tests.helpers import randomize_
from torch_bam import BAM
from torch_bam.fold import fold_bam


def _pair(combine="sum", **kw):
    bam = randomize_(BAM(32, reduction_ratio=4, combine=combine, **kw)).eval()
    return bam, copy.deepcopy(bam).fuse_for_inference()


def _x(*shape):
    return torch.randn(shape or (2, 32, 9, 7), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_equals_unfolded(combine, channels_last):
    bam, folded = _pair(combine)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = _x()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bam(x), rtol=1e-5, atol=1e-5)


def test_folded_scripts_and_exports():
    bam, folded = _pair()
    x = _x()
    expected = bam(x)
    torch.testing.assert_close(torch.jit.script(folded)(x), expected, rtol=1e-5, atol=1e-5)
    ep = torch.export.export(folded, (x,))
    torch.testing.assert_close(ep.module()(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_refuses_training_mode():
    with pytest.raises(RuntimeError, match="eval"):
        fold_bam(BAM(32).train())


def test_fold_finds_bam_inside_a_model_and_optionally_everywhere():
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), BAM(32, reduction_ratio=4)
    )
    model = randomize_(model).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    fold_bam(model)
    assert isinstance(model[1], nn.BatchNorm2d)  # outside BAM: left alone by default
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model[3].modules())
    fold_bam(model, everywhere=True)
    assert isinstance(model[1], nn.Identity)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_inplace_module_writes_into_input_only_without_grad():
    bam = randomize_(BAM(32, reduction_ratio=4, inplace=True)).eval()
    ref = copy.deepcopy(bam)
    ref.inplace = False
    x = _x()
    expected = ref(x)
    x_in = x.clone()
    with torch.no_grad():
        y = bam(x_in)
    assert y.data_ptr() == x_in.data_ptr()
    torch.testing.assert_close(y, expected)
    # Grad mode on: out of place, input untouched, gradients flow.
    x_grad = x.clone().requires_grad_()
    y = bam(x_grad)
    assert y.data_ptr() != x_grad.data_ptr()
    torch.testing.assert_close(x_grad.detach(), x)
    y.sum().backward()
    assert x_grad.grad is not None
