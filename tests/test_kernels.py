"""The fused CPU kernel: build cache, fallback without a compiler, and the kernel itself."""

import warnings

import pytest
import torch

from tests.helpers import assert_close
from torch_bam import functional
from torch_bam.functional import bam_gate, bam_gate_ref
from torch_bam.kernels import _cpu


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A private cache dir and no loaded kernel; restored afterwards."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(functional, "_warned_fallback", False)
    _cpu.reset()
    yield tmp_path
    _cpu.reset()


def test_builds_once_and_caches(fresh_kernel):
    assert _cpu.load() is not None, _cpu.last_error()
    (so,) = (fresh_kernel / "torch_bam").glob("*.so")
    mtime = so.stat().st_mtime_ns
    _cpu.reset()
    assert _cpu.load() is not None
    assert so.stat().st_mtime_ns == mtime  # loaded from the cache, not rebuilt
    assert not list((fresh_kernel / "torch_bam").glob("tmp*"))  # nothing half-written left


def test_falls_back_with_one_warning_when_no_compiler(fresh_kernel, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    x, c, s = torch.randn(2, 5, 3, 4), torch.randn(2, 5), torch.randn(2, 1, 3, 4)
    with pytest.warns(RuntimeWarning, match="falls back"):
        y = bam_gate(x, c, s)
    assert _cpu.load() is None and "nonexistent" in _cpu.last_error()
    assert_close(y, bam_gate_ref(x, c, s))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes once only
        xg = x.clone().requires_grad_()
        bam_gate(xg, c, s).sum().backward()
    assert not list((fresh_kernel / "torch_bam").glob("*.so"))


@pytest.mark.parametrize("product", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_direct(product, channels_last):
    lib = _cpu.load()
    assert lib is not None, _cpu.last_error()
    x = torch.randn(3, 19, 7, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c, s = 3 * torch.randn(3, 19), 3 * torch.randn(3, 1, 7, 5)
    combine = "product" if product else "sum"
    assert_close(_cpu.forward(lib, x, c, s, product), bam_gate_ref(x, c, s, combine))
    dy = torch.randn_like(x)
    xs = [t.clone().requires_grad_() for t in (x, c, s)]
    bam_gate_ref(*xs, combine).backward(dy)
    for ours, leaf in zip(_cpu.backward(lib, dy, x, c, s, product), xs, strict=True):
        torch.testing.assert_close(ours.reshape(leaf.shape), leaf.grad, rtol=1e-5, atol=1e-5)


def test_extreme_logits_stay_finite():
    x = torch.ones(1, 2, 1, 2)
    c = torch.tensor([[200.0, -200.0]])
    s = torch.tensor([[[[-200.0, 200.0]]]])
    y = bam_gate(x, c, s)
    assert torch.isfinite(y).all()
    assert_close(y, bam_gate_ref(x, c, s))
