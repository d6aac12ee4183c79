"""The fused CPU kernel: build cache, fallback without a compiler, and the kernel itself."""

import warnings

import pytest
import torch

from tests.helpers import assert_close
from torch_bam.cpu import gate as _cpu
from torch_bam.functional import bam_gate, bam_gate_ref


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A private cache dir and no loaded kernel; restored afterwards."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(_cpu, "_warned_fallback", False)
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


def test_a_damaged_cached_kernel_is_rebuilt_not_loaded(fresh_kernel):
    """A truncated .so in the cache (a full disk, a killed copy) is checked before loading and
    rebuilt: loaded, it killed the first float32 CPU forward with SIGBUS, in every later process
    too. The damaged cache is read in a subprocess, so a crash is a failure, not the test run's
    end."""
    import os
    import subprocess
    import sys

    assert _cpu.load() is not None, _cpu.last_error()
    (so,) = (fresh_kernel / "torch_bam").glob("*.so")
    size = so.stat().st_size
    # A new file under the name: this process keeps the whole one mapped (truncating that in
    # place would crash this process).
    cut = so.with_name("cut")
    cut.write_bytes(so.read_bytes()[: size // 2])
    os.replace(cut, so)
    code = (
        "import torch\n"
        "from torch_bam.cpu import gate\n"
        "from torch_bam.functional import bam_gate, bam_gate_ref\n"
        "x, c, s = torch.randn(2, 5, 3, 4), torch.randn(2, 5), torch.randn(2, 1, 3, 4)\n"
        "y = bam_gate(x, c, s)\n"
        "assert gate.load() is not None, gate.last_error()\n"
        "torch.testing.assert_close(y, bam_gate_ref(x, c, s))\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(fresh_kernel)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert so.stat().st_size == size  # rebuilt whole under its name
    _cpu.reset()
    assert _cpu.load() is not None  # and this process loads the rebuilt one


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


@pytest.mark.parametrize("shape", [(0, 5, 3, 4), (2, 5, 0, 4), (2, 0, 3, 4), (0, 0, 0, 0)])
@pytest.mark.parametrize("product", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_empty_tensors(shape, product, channels_last):
    # An empty batch (the last one of an epoch, a filtered batch) is no error in plain torch.
    lib = _cpu.load()
    assert lib is not None, _cpu.last_error()
    b, ch, h, w = shape
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c, s = torch.randn(b, ch), torch.randn(b, 1, h, w)
    assert _cpu.forward(lib, x, c, s, product).shape == shape
    dx, dc, ds = _cpu.backward(lib, torch.randn_like(x), x, c, s, product)
    assert (dx.shape, dc.shape, ds.shape) == (shape, c.shape, s.shape)
    assert not dc.any() and not ds.any()  # sums over nothing are zero


def test_extreme_logits_stay_finite():
    x = torch.ones(1, 2, 1, 2)
    c = torch.tensor([[200.0, -200.0]])
    s = torch.tensor([[[[-200.0, 200.0]]]])
    y = bam_gate(x, c, s)
    assert torch.isfinite(y).all()
    assert_close(y, bam_gate_ref(x, c, s))


def _wide_logits(b, ch, h, w, bound, seed=0):
    """Logits uniform in [-bound, bound], with pairs of opposite sign whose sum is small.

    Beyond |88|, exp(-c) and exp(-s) alone overflow or underflow in float32 while
    sigmoid(c + s) is anywhere in (0, 1): a kernel must add first, then clamp or exponentiate.
    """
    gen = torch.Generator().manual_seed(seed)
    c = 400 * torch.rand(b, ch, generator=gen, dtype=torch.float64) - 200
    s = 400 * torch.rand(b, 1, h, w, generator=gen, dtype=torch.float64) - 200
    # Every other pixel: minus one channel's logit, plus a little, so c + s lies in [-4, 4].
    near = -c[:, :1, None, None] + 8 * torch.rand(b, 1, h, w, generator=gen) - 4
    s[..., ::2] = near[..., ::2].to(s.dtype)
    c[:, 0] = torch.where(torch.arange(b) % 2 == 0, 90.0, c[:, 0])  # the example...
    s[:, 0, 0, 1] = torch.where(torch.arange(b) % 2 == 0, -89.0, s[:, 0, 0, 1])  # ...c + s = 1
    return c.clamp(-bound, bound), s.clamp(-bound, bound)


# 80: the largest logits the kernel's exp(-c) * exp(-s) shortcut takes; 200: past it.
@pytest.mark.parametrize("bound", [80, 200])
@pytest.mark.parametrize("product", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_wide_logits_against_float64_reference(bound, product, channels_last):
    lib = _cpu.load()
    assert lib is not None, _cpu.last_error()
    shape = (4, 19, 7, 6)
    gen = torch.Generator().manual_seed(1)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    dy64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    c64, s64 = _wide_logits(*shape, bound)
    combine = "product" if product else "sum"
    leaves = [t.clone().requires_grad_() for t in (x64, c64, s64)]
    y_ref = bam_gate_ref(*leaves, combine)
    y_ref.backward(dy64)
    x, c, s, dy = (t.float() for t in (x64, c64, s64, dy64))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours = [_cpu.forward(lib, x, c, s, product), *_cpu.backward(lib, dy, x, c, s, product)]
    refs = [y_ref, *(leaf.grad for leaf in leaves)]
    for name, a, b in zip(("y", "dx", "dc", "ds"), ours, refs, strict=True):
        torch.testing.assert_close(
            a.double().reshape(b.shape), b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_opposite_sign_logits_through_bam_gate():
    # The example: c = 90, s = -89 gives sigmoid(1), not the 0.5 of clamping each.
    x = torch.ones(1, 1, 1, 1, requires_grad=True)
    c, s = torch.tensor([[90.0]]), torch.tensor([[[[-89.0]]]])
    y = bam_gate(x, c, s)
    y.backward()
    expected = torch.sigmoid(torch.tensor(1.0))
    torch.testing.assert_close(y.reshape(()), 1 + expected)
    torch.testing.assert_close(x.grad.reshape(()), 1 + expected)
