"""torch_bam.cuda.kernels under the Triton interpreter, against float64 references.

Fresh random inputs every test (the seed is in each failure message), outputs checked to be
finite everywhere, and the allocator poisoned with NaN before each call, so an element a
kernel fails to write shows up. Shapes are tiny (the interpreter is slow) but odd, and span
several tiles: [2, 70, 9, 9] has 3 row tiles, [1, 140, 5, 3] in channels_last and [2, 3, 12, 13]
in NCHW have 2 column tiles (the tiles are the GPU's: 4096 elements, at most 128 wide).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.cuda import weight_bytes
from tests.cuda.conftest import IN_PROCESS
from tests.cuda.launches import NO_LAUNCH
from torch_bam import functional
from torch_bam.cuda import kernels


@pytest.fixture(autouse=True)
def _interpreted(request):
    if not IN_PROCESS and request.node.originalname != "test_in_a_subprocess":
        pytest.skip("triton was imported without the interpreter: see test_in_a_subprocess")


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last"]
SHAPES = [(2, 70, 9, 9), (3, 5, 1, 7), (1, 16, 7, 7), (1, 140, 5, 3), (2, 3, 12, 13)]
# Output rounding of one float32 result to the dtype (plus float32 maths in the reductions).
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _gen():
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.Generator().manual_seed(seed), seed


def _rand(gen, *shape, dtype=torch.float32, layout="nchw", scale=1.0):
    t = (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


def _poison():
    # Freed NaN blocks are what the next small allocations reuse: unwritten outputs read NaN.
    for n in (1 << 10, 1 << 14, 1 << 16):
        torch.full((n,), float("nan"))


def _check(actual, expected, tol, seed, what):
    assert torch.isfinite(actual).all(), f"{what}: non-finite elements (seed {seed})"
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(
        actual.double(),
        expected,
        rtol=tol,
        atol=tol * scale,
        msg=lambda m: f"{what} (seed {seed}): {m}",
    )


def _gate64(x, c, s, product):
    b, ch = x.shape[:2]
    c4, s64 = c.double().reshape(b, ch, 1, 1), s.double()
    return torch.sigmoid(c4 * s64 if product else c4 + s64)


def _fmt(layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def _inputs(shape, dtype, layout, gen):
    b, ch, h, w = shape
    x = _rand(gen, *shape, dtype=dtype, layout=layout)
    c = _rand(gen, b, ch, scale=2.0)
    s = _rand(gen, b, 1, h, w, scale=2.0)
    return x, c, s


@pytest.mark.parametrize("product", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gate_forward_and_one_pass_backward(shape, dtype, layout, product):
    gen, seed = _gen()
    x, c, s = _inputs(shape, dtype, layout, gen)
    dy = _rand(gen, *shape, dtype=dtype, layout=layout)
    g = _gate64(x, c, s, product)
    _poison()
    y = kernels.gate_forward(x, c, s, product)
    assert y.dtype == dtype and y.is_contiguous(memory_format=_fmt(layout))
    _check(y, x.double() * (1 + g), TOL[dtype], seed, "y")

    dl = dy.double() * x.double() * g * (1 - g)
    b, ch = shape[:2]
    dc_ref = (dl * s.double()).sum((2, 3)) if product else dl.sum((2, 3))
    ds_ref = (dl * c.double().reshape(b, ch, 1, 1) if product else dl).sum(1, keepdim=True)
    _poison()
    dx, dc, ds = kernels.gate_backward(dy, x, c, s, product)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=_fmt(layout))
    assert dc.dtype == ds.dtype == torch.float32
    assert dc.shape == (b, ch) and ds.shape == (b, 1, *shape[2:])
    _check(dx, dy.double() * (1 + g), TOL[dtype], seed, "dx")
    _check(dc, dc_ref, 1e-4, seed, "dc")
    _check(ds, ds_ref, 1e-4, seed, "ds")
    _poison()
    dc2, ds2 = kernels.gate_backward_reduce(dy, x, c, s, product)
    _check(dc2, dc_ref, 1e-4, seed, "dc (reduce)")
    _check(ds2, ds_ref, 1e-4, seed, "ds (reduce)")


def _dx_ref(dy, c, s, product, w, dr, dpool, dot_dtype):
    g = _gate64(dy, c, s, product)
    out = dy.double() * (1 + g)
    if dr is not None:
        # The kernel's documented precision: the dot runs on operands in dy's dtype.
        w64 = w.reshape(w.shape[0], -1).to(dot_dtype).double()
        out = out + torch.einsum("kc,bkhw->bchw", w64, dr.to(dot_dtype).double())
    if dpool is not None:
        out = out + dpool.double()[:, :, None, None] / (dy.shape[2] * dy.shape[3])
    return out


@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_backward_dx(dtype, layout, k):
    gen, seed = _gen()
    shape = (2, 70, 9, 9) if k == 20 else (3, 5, 3, 7)
    b, ch, h, w = shape
    dy = _rand(gen, *shape, dtype=dtype, layout=layout)
    c, s = _rand(gen, b, ch, scale=2.0), _rand(gen, b, 1, h, w, scale=2.0)
    wr = _rand(gen, k, ch, 1, 1, scale=0.3)
    # dr in the other layout than dy, and in float32: the kernel takes both.
    dr = _rand(gen, b, k, h, w, layout="nchw" if layout == "channels_last" else "channels_last")
    dpool = _rand(gen, b, ch)
    for product, args in (
        (False, (wr, dr, dpool)),
        (True, (wr, dr, None)),
        (False, (None, None, dpool)),
    ):
        _poison()
        dx = kernels.gate_backward_dx(dy, c, s, product, *args)
        assert dx.dtype == dtype and dx.is_contiguous(memory_format=_fmt(layout))
        _check(dx, _dx_ref(dy, c, s, product, *args, dtype), 2 * TOL[dtype], seed, f"dx {product}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_without_tf32_takes_the_fma_tiles(monkeypatch, layout):
    """With cudnn.allow_tf32 off, float32 dots run without tensor cores (FMA), on smaller tiles
    (kernels._pool_tile, kernels._dx_tile): 16 channels a step in pool_reduce, and steps of 16
    over K in gate_backward_dx (K = 40: three, the weight read per tile). Against float64."""
    gen, seed = _gen()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    metas = []
    real = kernels._launch

    def launch(kernel, grid, *args, **meta):
        metas.append(meta)
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(kernels, "_launch", launch)
    shape, k = (2, 70, 9, 9), 40
    x = _rand(gen, *shape, layout=layout)
    c, s = _rand(gen, 2, 70, scale=2.0), _rand(gen, 2, 1, 9, 9, scale=2.0)
    wr, dr, dpool = _rand(gen, k, 70, scale=0.3), _rand(gen, 2, k, 9, 9), _rand(gen, 2, 70)
    _poison()
    pooled, r = kernels.pool_reduce(x, wr)
    _check(r, torch.einsum("kc,bchw->bkhw", wr.double(), x.double()), 2e-5, seed, "r")
    _check(pooled, x.double().mean((2, 3)), 1e-5, seed, "pooled")
    _poison()
    dx = kernels.gate_backward_dx(x, c, s, False, wr, dr, dpool)
    _check(dx, _dx_ref(x, c, s, False, wr, dr, dpool, torch.float32), 2e-5, seed, "dx")
    pool_meta, dx_meta = metas
    assert pool_meta["PRECISION"] == dx_meta["PRECISION"] == "ieee"
    assert pool_meta["BC"] == 16 and dx_meta["BK"] == 16


def test_dr_whose_size_one_dim_has_an_odd_stride():
    # Contiguous by torch's rule (a size-1 dim's stride does not count); the kernel must not
    # read that stride.
    gen, seed = _gen()
    dy, c, s = _rand(gen, 2, 8, 7, 1), _rand(gen, 2, 8), _rand(gen, 2, 1, 7, 1)
    wr, dr = _rand(gen, 3, 8), _rand(gen, 2, 3, 7, 1)
    dr = dr.as_strided(dr.shape, (21, 7, 1, 999))
    assert dr.is_contiguous()
    dx = kernels.gate_backward_dx(dy, c, s, False, wr, dr)
    _check(dx, _dx_ref(dy, c, s, False, wr, dr, None, torch.float32), 2e-5, seed, "dx")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_reduce(dtype, layout, bias):
    gen, seed = _gen()
    for shape, k in (((2, 70, 9, 9), 20), ((3, 5, 1, 7), 1)):
        b, ch, h, w = shape
        x = _rand(gen, *shape, dtype=dtype, layout=layout)
        wr = _rand(gen, k, ch, 1, 1, scale=0.3)
        br = _rand(gen, k) if bias else None
        _poison()
        pooled, r = kernels.pool_reduce(x, wr, br)
        assert pooled.dtype == torch.float32 and pooled.shape == (b, ch)
        assert r.dtype == dtype and r.shape == (b, k, h, w)
        assert r.is_contiguous(memory_format=torch.channels_last)
        _check(pooled, x.double().mean((2, 3)), 1e-5, seed, "pooled")
        r_ref = torch.einsum("kc,bchw->bkhw", wr.reshape(k, ch).to(dtype).double(), x.double())
        if bias:
            r_ref = r_ref + br.double()[None, :, None, None]
        _check(r, r_ref, 2 * TOL[dtype], seed, "r")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduce_weight_grad(dtype, layout):
    gen, seed = _gen()
    x = _rand(gen, 2, 12, 5, 3, dtype=dtype, layout=layout)
    dr = _rand(gen, 2, 4, 5, 3, dtype=dtype, layout=layout)
    dw = kernels.reduce_weight_grad(x, dr)
    assert dw.dtype == torch.float32 and dw.shape == (4, 12)
    ref = torch.einsum("bkhw,bchw->kc", dr.double(), x.double())
    _check(dw, ref, 4 * TOL[dtype], seed, "dW_r")


class _Ops(TorchDispatchMode):
    """The ATen ops dispatched while active that compute (not views or allocations), with
    their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or str(func) in NO_LAUNCH):
            self.calls.append((str(func), args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduce_weight_grad_is_the_plain_convs_own_weight_grad(dtype, layout):
    """TF32 exactly where the plain path has it. The plain path's 1x1 reduce conv gets its
    weight grad from aten.convolution_backward (cuDNN on CUDA, which follows
    ``torch.backends.cudnn.allow_tf32``); reduce_weight_grad must dispatch that op, on x itself
    (no copy), and no cuBLAS product (mm/bmm follow ``matmul.allow_tf32`` instead: in float32
    with the default flags the two differ by about 1e-3 on a GPU; a CPU has no TF32, so the op
    is what is checked here, and the values against the plain conv's)."""
    gen, seed = _gen()
    x = _rand(gen, 2, 12, 5, 3, dtype=dtype, layout=layout)
    dr = _rand(gen, 2, 4, 5, 3, dtype=dtype, layout=layout)
    conv = torch.nn.Conv2d(12, 4, 1).to(dtype).to(memory_format=_fmt(layout))
    with _Ops() as plain:
        (expected,) = torch.autograd.grad(conv(x), conv.weight, dr)
    with _Ops() as ours:
        dw = kernels.reduce_weight_grad(x, dr, out_dtype=dtype)
    backward_ops = [name for name, _ in plain.calls if "backward" in name]
    assert backward_ops == ["aten.convolution_backward.default"]
    assert [name for name, _ in ours.calls] == backward_ops
    (_, args), = ours.calls
    assert args[1] is x and args[0].data_ptr() == dr.data_ptr()  # read as they are
    assert dw.dtype == dtype and dw.shape == (4, 12)
    _check(dw, expected.reshape(4, 12).double(), TOL[dtype], seed, "dW_r against the conv's")


def test_dy_in_the_other_layout_than_x():
    gen, seed = _gen()
    x, c, s = _inputs((2, 6, 3, 5), torch.float32, "channels_last", gen)
    dy = _rand(gen, 2, 6, 3, 5)  # NCHW
    g = _gate64(x, c, s, False)
    dx, dc, _ = kernels.gate_backward(dy, x, c, s, False)
    assert dx.is_contiguous(memory_format=torch.channels_last)
    _check(dx, dy.double() * (1 + g), TOL[torch.float32], seed, "dx")
    _check(dc, (dy.double() * x.double() * g * (1 - g)).sum((2, 3)), 1e-4, seed, "dc")


def test_batch_zero_returns_empty_results():
    x = torch.randn(0, 8, 5, 3)
    c, s, w = torch.randn(0, 8), torch.randn(0, 1, 5, 3), torch.randn(2, 8)
    assert kernels.gate_forward(x, c, s, False).shape == x.shape
    dx, dc, ds = kernels.gate_backward(x, x, c, s, True)
    assert dx.shape == x.shape and dc.shape == (0, 8) and ds.shape == (0, 1, 5, 3)
    assert kernels.gate_backward_dx(x, c, s, False, w, torch.randn(0, 2, 5, 3), c).shape == x.shape
    pooled, r = kernels.pool_reduce(x, w)
    assert pooled.shape == (0, 8) and r.shape == (0, 2, 5, 3)
    dw = kernels.reduce_weight_grad(x, torch.randn(0, 2, 5, 3))
    assert torch.equal(dw, torch.zeros(2, 8))


def test_rejects_what_the_kernels_do_not_take():
    x, c, s = torch.randn(2, 4, 3, 6), torch.randn(2, 4), torch.randn(2, 1, 3, 6)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.gate_forward(x[..., ::2], c, s[..., ::2], False)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        kernels.gate_forward(x.to(torch.int32), c, s, False)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        kernels.gate_forward(x.double(), c, s, False)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        kernels.gate_forward(x[0], c, s, False)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.gate_forward(x, torch.randn(2, 5), s, False)
    with pytest.raises(ValueError, match="float tensor"):
        kernels.gate_forward(x, c.long(), s, False)
    with pytest.raises(ValueError, match="shape"):
        kernels.gate_backward_reduce(x[:1], x, c, s, False)
    with pytest.raises(ValueError, match="together"):
        kernels.gate_backward_dx(x, c, s, False, dr=torch.randn(2, 2, 3, 6))
    with pytest.raises(ValueError, match="dr must be"):
        kernels.gate_backward_dx(x, c, s, False, torch.randn(2, 4), torch.randn(2, 3, 3, 6))
    with pytest.raises(ValueError, match="w_reduce must be"):
        kernels.pool_reduce(x, torch.randn(2, 5))
    assert not kernels.supported(x[..., ::2]) and not kernels.supported(x.double())
    assert kernels.supported(x) and kernels.supported(
        x.contiguous(memory_format=torch.channels_last)
    )


@pytest.fixture
def triton_backend():
    functional.set_backend("triton")
    yield
    functional.set_backend("auto")


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_triton_backend_runs_bam_gate_through_the_kernels(
    triton_backend, layout, combine, monkeypatch
):
    gen, seed = _gen()
    x = _rand(gen, 2, 6, 3, 10, layout="channels_last" if layout == "channels_last" else "nchw")
    if layout == "strided":
        x = x[..., ::2]
    c, s = _rand(gen, 2, 6), _rand(gen, 2, 1, *x.shape[2:])
    calls = []
    for name in ("gate_forward", "gate_backward"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    leaves = [t.clone().requires_grad_() for t in (x, c, s)]
    y = functional.bam_gate(*leaves, combine)
    dy = _rand(gen, *x.shape)
    y.backward(dy)
    assert calls == ["gate_forward", "gate_backward"]
    ref = [t.double().requires_grad_() for t in (x, c, s)]
    y_ref = functional.bam_gate_ref(*ref, combine)
    y_ref.backward(dy.double())
    _check(y, y_ref.detach(), TOL[torch.float32], seed, "y")
    for name, a, r in zip(("dx", "dc", "ds"), leaves, ref, strict=True):
        _check(a.grad, r.grad, 1e-4, seed, name)


def test_triton_backend_rejects_float64(triton_backend):
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        functional.bam_gate(
            x, torch.randn(1, 2, dtype=torch.float64), torch.randn(1, 1, 3, 3, dtype=torch.float64)
        )


def test_no_timing_and_the_same_bits_on_every_call(monkeypatch):
    # Tiles come from the shape alone: nothing is timed (a tuner's choice would follow timing
    # noise and change the reduction order between runs or ranks).
    import triton.testing

    def no_timing(*a, **k):
        raise AssertionError("a kernel was timed")

    monkeypatch.setattr(triton.testing, "do_bench", no_timing)
    gen, _ = _gen()
    x, c, s = _inputs((2, 140, 9, 9), torch.bfloat16, "channels_last", gen)
    dy = _rand(gen, *x.shape, dtype=torch.bfloat16, layout="channels_last")
    first = kernels.gate_backward(dy, x, c, s, False)
    for a, b in zip(first, kernels.gate_backward(dy, x, c, s, False), strict=True):
        assert torch.equal(a, b)


# Shared memory a block may have (opt-in maximum), by compute capability: sm_80 (A100),
# sm_89 (L4/L40, and sm_86's limit), sm_90 (H100/H200). Registers: 64K per block, 255 a thread.
SHARED = {80: 166_912, 89: 101_376, 90: 232_448}
REGISTERS = 65_536
TARGETS = (90, 80, 89)  # cuda/support.py's CAPABILITIES: sm_80 .. sm_90


def test_every_variant_bam_resnet50_uses_compiles_for_sm80_sm89_sm90(tmp_path):
    """Compiled without a GPU (tests/cuda/compile_targets.py): every kernel variant the
    network's three blocks launch, in fp32/bf16/fp16 and both layouts for sm_90, bf16
    channels_last and fp32 NCHW for sm_80 and sm_89, fp32 without TF32 (FMA dots, their own
    tiles) in both layouts for all three, fits the target's shared memory and
    registers, with at most a few words spilled. The interpreter runs Python, not the
    compiler: tile shapes that tl.dot rejects, atomics a target lacks, or types that do not
    lower, show up only here. A fresh cache directory, so that it compiles (and ptxas reports)
    every time."""
    from torch_bam.cuda import support

    low, high = support.CAPABILITIES
    assert {(t // 10, t % 10) for t in TARGETS} >= {low, high}  # the gate's range is compiled
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env.update(PYTHONPATH=os.pathsep.join([root, *sys.path]), TRITON_CACHE_DIR=str(tmp_path))
    script = os.path.join(os.path.dirname(__file__), "compile_targets.py")
    # Two compilers side by side (a core each): the first target with every dtype and layout,
    # the others with what the benchmarks run; each its own fresh cache.
    jobs = [[str(TARGETS[0])], ["--partial", *map(str, TARGETS[1:])]]
    procs = []
    for i, args in enumerate(jobs):
        env_i = {**env, "TRITON_CACHE_DIR": str(tmp_path / str(i))}
        procs.append(subprocess.Popen([sys.executable, script, *args], env=env_i, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))  # fmt: skip
    rows = []
    for proc in procs:
        out, err = proc.communicate(timeout=1500)
        assert proc.returncode == 0, err[-3000:]
        mine = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert out.strip().endswith(f"done {len(mine)}")
        rows += mine
    expected = {"_pool_reduce_kernel", "_fwd_kernel", "_bwd_kernel", "_dx_kernel",
                "_mlp_fwd_kernel", "_mlp_bwd_kernel"}  # fmt: skip
    for sm in TARGETS:
        kinds = {r["kernel"] for r in rows if r["sm"] == sm}
        assert kinds == expected, (sm, kinds)
    for r in rows:
        assert r["shared"] <= SHARED[r["sm"]], r
        assert r["registers"] is not None and r["registers"] <= 255, r
        assert r["registers"] * 32 * r["num_warps"] <= REGISTERS, r
        # ptxas spills up to three words in a few of the gate backward's NCHW variants at
        # 40-64 registers (its choice, not pressure: the budget is 255; triton 3.6 and 3.8
        # alike); a tile that does not fit spills far more.
        assert r["spill_stores"] <= 16 and r["spill_loads"] <= 16, r


@pytest.mark.skipif(IN_PROCESS, reason="the tests above ran in this process")
def test_in_a_subprocess():  # pragma: no cover - only when triton came in without the interpreter
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.dirname(__file__)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # exp(200)
def test_extreme_logits_stay_finite():
    x = torch.ones(1, 2, 1, 2)
    c = torch.tensor([[200.0, -200.0]])
    s = torch.tensor([[[[-200.0, 200.0]]]])
    y = kernels.gate_forward(x, c, s, True)
    torch.testing.assert_close(y, functional.bam_gate_ref(x, c, s, "product"))
    dx, dc, ds = kernels.gate_backward(x, x, c, s, False)
    assert torch.isfinite(dx).all() and torch.isfinite(dc).all() and torch.isfinite(ds).all()


def _mlp_ref(p, w1, b1, g, beta, rm, rv, w2, b2, train):
    lin1 = torch.nn.Linear(*w1.shape[::-1]).double()
    lin2 = torch.nn.Linear(*w2.shape[::-1]).double()
    bn = torch.nn.BatchNorm1d(w1.shape[0]).double().train(train)
    with torch.no_grad():
        for m, ws in ((lin1, (w1, b1)), (lin2, (w2, b2)), (bn, (g, beta))):
            m.weight.copy_(ws[0])
            m.bias.copy_(ws[1])
        bn.running_mean.copy_(rm)
        bn.running_var.copy_(rv)
    return lin1, bn, lin2


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_mlp_forward_and_backward(dtype, train):
    gen, seed = _gen()
    b, ch, hid = 37, 70, 5  # two row blocks, two column blocks, a padded hidden tile
    p = _rand(gen, b, ch, dtype=dtype)
    w1, b1 = _rand(gen, hid, ch, scale=0.3), _rand(gen, hid)
    w2, b2 = _rand(gen, ch, hid), _rand(gen, ch)
    g, beta = 1 + 0.2 * _rand(gen, hid), _rand(gen, hid)
    rm, rv = 0.1 * _rand(gen, hid), 0.5 + _rand(gen, hid).abs()
    dc = _rand(gen, b, ch, dtype=dtype)
    rm_k, rv_k = rm.clone(), rv.clone()
    _poison()
    z, a, mean, invstd, c = kernels.mlp_forward(p, w1, b1, g, beta, rm_k, rv_k, w2, b2, train,
                                                0.1, 1e-5)  # fmt: skip
    lin1, bn, lin2 = _mlp_ref(p.double(), w1, b1, g, beta, rm, rv, w2, b2, train)
    p64 = p.double().requires_grad_()
    z_ref = lin1(p64)
    h_ref = bn(z_ref)
    c_ref = lin2(torch.relu(h_ref))
    # The gradients at the kernel's ReLU mask: in float16/bfloat16 a BatchNorm output within
    # rounding of zero may take the other side, which moves a whole row of dz (by far more than
    # rounding). Such flips are allowed only there.
    kept = a > 0
    flipped = kept != (h_ref > 0)
    assert (h_ref[flipped].abs() <= 4 * TOL[dtype] * max(1.0, h_ref.abs().max().item())).all()
    lin2(h_ref * kept).backward(dc.double())
    tol = 4 * TOL[dtype]
    _check(z, z_ref, tol, seed, "z")
    _check(c, c_ref, 8 * TOL[dtype], seed, "c")
    # (from z as the kernel rounds it, in the compute dtype, as the plain path's BN sees it)
    _check(rm_k, bn.running_mean, max(1e-4, TOL[dtype]), seed, "running_mean")
    _check(rv_k, bn.running_var, max(1e-4, TOL[dtype]), seed, "running_var")
    _poison()
    grads = kernels.mlp_backward(dc, p, z, a, mean, invstd, g, w1, w2, train, True, b1, beta, b2)
    refs = (lin1.weight.grad, lin1.bias.grad, bn.weight.grad, bn.bias.grad, lin2.weight.grad,
            lin2.bias.grad, p64.grad)  # fmt: skip
    names = ("dw1", "db1", "dgamma", "dbeta", "dw2", "db2", "dpool")
    for name, got, ref in zip(names, grads, refs, strict=True):
        _check(got, ref, 16 * TOL[dtype], seed, name)


def _range_loops(source: str) -> dict[str, bool]:
    """The ``for ... in range(...)`` loops of the @triton.jit functions in ``source``: whether
    their bounds are literals or ``tl.constexpr`` parameters. triton 3.6's interpreter fails on
    a run-time bound under NumPy >= 2.4 (its tensors' ``__index__`` is ``int()`` of a
    one-element array, triton-lang/triton#9171): the kernels loop over those with ``while``."""
    import ast

    loops = {}
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        if not any("jit" in ast.unparse(d) for d in fn.decorator_list):
            continue
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        const = {a.arg for a in args if a.annotation and "constexpr" in ast.unparse(a.annotation)}
        for loop in ast.walk(fn):
            if not (isinstance(loop, ast.For) and isinstance(loop.iter, ast.Call)):
                continue
            names = {n.id for b in loop.iter.args for n in ast.walk(b) if isinstance(n, ast.Name)}
            loops[f"{fn.name}: {ast.unparse(loop.iter)}"] = not names - const
    return loops


def test_kernel_loops_have_compile_time_bounds():
    with open(kernels.__file__) as f:
        loops = _range_loops(f.read())
    assert len(loops) >= 4 and all(loops.values()), loops
    sample = (  # the check sees a run-time bound
        "@triton.jit\ndef k(n, K: tl.constexpr):\n"
        "    for i in range(0, K, 4):\n        pass\n"
        "    for i in range(0, n):\n        pass\n"
    )
    assert _range_loops(sample) == {"k: range(0, K, 4)": True, "k: range(0, n)": False}


# ---------------------------------------------------------------------------------------------
# Safe wherever it may run: counters, device, TF32


def _module_tensors():
    """Tensors the kernels module keeps between calls (in globals, or in dicts there)."""
    found = []
    for name, v in vars(kernels).items():
        values = v.values() if isinstance(v, dict) else [v]
        found += [name for t in values if isinstance(t, torch.Tensor)]
    return found


def test_counters_are_per_call_and_back_at_zero():
    """No counter buffer lives in the module (under CUDA graphs a kept buffer sits in a graph
    pool that later warm-ups free and reuse); a caller's buffer is zero again after each call
    and may serve the next one."""
    gen, seed = _gen()
    x, c, s = _inputs((3, 70, 9, 9), torch.bfloat16, "channels_last", gen)
    dy = _rand(gen, *x.shape, dtype=torch.bfloat16, layout="channels_last")
    kernels.gate_backward(dy, x, c, s, False)
    kernels.pool_reduce(x, _rand(gen, 4, 70))
    assert _module_tensors() == []
    tickets = kernels.counters(x)
    assert tickets.dtype == torch.int32 and torch.equal(tickets, torch.zeros(3, dtype=torch.int32))
    dc, ds = kernels.gate_backward_reduce(dy, x, c, s, False, tickets=tickets)
    assert torch.equal(tickets, torch.zeros_like(tickets))
    again = kernels.gate_backward_reduce(dy, x, c, s, False, tickets=tickets)
    assert torch.equal(again[0], dc) and torch.equal(again[1], ds)
    kernels.pool_reduce(x, _rand(gen, 4, 70), tickets=tickets)
    assert torch.equal(tickets, torch.zeros_like(tickets))
    with pytest.raises(ValueError, match="tickets must be an int32"):
        kernels.pool_reduce(x, _rand(gen, 4, 70), tickets=torch.zeros(3))


def test_every_launch_runs_under_its_tensors_device(monkeypatch):
    """Triton launches on the current device: each launch must be inside a torch.cuda.device
    guard for its tensors' device (a tensor on cuda:1 with cuda:0 current). Checked on fake
    cuda:1 tensors, with the guard and the kernels recorded, for the gate op's kernels and the
    block's."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    current = []
    launches = []

    class Guard:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            current.append(self.device)

        def __exit__(self, *exc):
            current.pop()

    class Kernel:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *a, **k: launches.append((self.name, list(current)))

    monkeypatch.setattr(torch.cuda, "device", Guard)
    names = ("_fwd_kernel", "_bwd_kernel", "_dx_kernel", "_pool_reduce_kernel",
             "_mlp_fwd_kernel", "_mlp_bwd_kernel")  # fmt: skip
    for name in names:
        monkeypatch.setattr(kernels, name, Kernel(name))
    dev = torch.device("cuda", 1)
    with FakeTensorMode():
        x = torch.empty(2, 32, 5, 5, device=dev)
        c, s = torch.empty(2, 32, device=dev), torch.empty(2, 1, 5, 5, device=dev)
        w, dr = torch.empty(2, 32, device=dev), torch.empty(2, 2, 5, 5, device=dev)
        kernels.gate_forward(x, c, s, False)
        kernels.gate_backward(x, x, c, s, False)
        kernels.gate_backward_dx(x, c, s, False, w, dr, c)
        kernels.pool_reduce(x, w)
        h = [torch.empty(2, device=dev) for _ in range(5)]  # b1, gamma, beta, running mean, var
        z, a, mean, invstd, _ = kernels.mlp_forward(c, w, *h, w.t().contiguous(), c[0], True,
                                                    0.1, 1e-5)  # fmt: skip
        kernels.mlp_backward(c, c, z, a, mean, invstd, h[1], w, w.t().contiguous(), True, True,
                             h[0], h[2], c[0])  # fmt: skip
    assert sorted({n for n, _ in launches}) == sorted(names)
    assert all(guards == [dev] for _, guards in launches), launches


def test_every_kernel_launch_goes_through_the_guarded_launcher():
    """``kernel[grid](...)`` appears once in the module: in _launch (so the test above covers
    every launch)."""
    import ast

    with open(kernels.__file__) as f:
        tree = ast.parse(f.read())
    calls = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
    ]  # fmt: skip
    assert len(calls) == 2 and all(ast.unparse(c.func) == "kernel[grid]" for c in calls)


@pytest.mark.parametrize("matmul_tf32", [False, True])
@pytest.mark.parametrize("cudnn_tf32", [False, True])
def test_float32_dots_use_tf32_exactly_where_the_plain_path_does(
    monkeypatch, matmul_tf32, cudnn_tf32
):
    """The 1x1 reduce's dots (pool_reduce, gate_backward_dx) follow cudnn.allow_tf32, like the
    cuDNN conv they replace; the channel MLP's (mlp_forward, mlp_backward) follow
    matmul.allow_tf32, like nn.Linear. bf16 never asks for TF32."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    try:
        _check_precisions(monkeypatch, matmul_tf32, cudnn_tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _check_precisions(monkeypatch, matmul_tf32, cudnn_tf32):
    seen = {}
    real = kernels._launch

    def launch(kernel, grid, *args, **meta):
        if "PRECISION" in meta:
            seen.setdefault(kernel.fn.__name__, set()).add(meta["PRECISION"])
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(kernels, "_launch", launch)
    gen, _ = _gen()
    for dtype in (torch.float32, torch.bfloat16):
        x, c, s = _inputs((2, 16, 3, 3), dtype, "nchw", gen)
        w = _rand(gen, 2, 16)
        kernels.pool_reduce(x, w)
        kernels.gate_backward_dx(x, c, s, False, w, _rand(gen, 2, 2, 3, 3))
        p = c.to(dtype)
        h = [_rand(gen, 2).abs() + 0.5 for _ in range(5)]  # b1, gamma, beta, running mean, var
        z, a, mean, invstd, _ = kernels.mlp_forward(p, w, *h, w.t().contiguous(), _rand(gen, 16),
                                                    True, 0.1, 1e-5)  # fmt: skip
        kernels.mlp_backward(p, p, z, a, mean, invstd, h[1], w, w.t().contiguous(), True, True,
                             h[0], h[2], _rand(gen, 16))  # fmt: skip
        want = {
            "_pool_reduce_kernel": cudnn_tf32, "_dx_kernel": cudnn_tf32,
            "_mlp_fwd_kernel": matmul_tf32, "_mlp_bwd_kernel": matmul_tf32,
        }  # fmt: skip
        for name, tf32 in want.items():
            expected = "tf32" if tf32 and dtype == torch.float32 else "ieee"
            assert seen.pop(name) == {expected}, (name, dtype)


# ---------------------------------------------------------------------------------------------
# Faster: the finishing sum and the dx kernel's weight reads


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dx_programs_that_walk_several_tiles_give_the_same_bits(monkeypatch, layout):
    """gate_backward_dx's programs are persistent: each holds one slice of W_r and walks every
    NW-th tile of all images. With fewer programs than tiles (each takes several) dx is the
    same, bit for bit, as with one tile a program."""
    gen, seed = _gen()
    shape = (3, 70, 9, 9)
    dy = _rand(gen, *shape, dtype=torch.bfloat16, layout=layout)
    c, s = _rand(gen, 3, 70, scale=2.0), _rand(gen, 3, 1, 9, 9, scale=2.0)
    wr, dr, dpool = _rand(gen, 20, 70, scale=0.3), _rand(gen, 3, 20, 9, 9), _rand(gen, 3, 70)
    one_each = kernels.gate_backward_dx(dy, c, s, False, wr, dr, dpool)
    for programs in (1, 3):
        monkeypatch.setattr(kernels, "DX_PROGRAMS", programs)
        _poison()
        dx = kernels.gate_backward_dx(dy, c, s, False, wr, dr, dpool)
        assert torch.equal(dx, one_each), (programs, seed)


def _launch_meta(monkeypatch, fn):
    """(grid, meta) of every launch ``fn`` makes, on meta tensors (nothing runs)."""
    seen = []
    monkeypatch.setattr(kernels, "_launch", lambda k, grid, *a, **m: seen.append((k, grid, m)))
    monkeypatch.setattr(kernels, "_check_x", lambda x, name: None)
    fn()
    return seen


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("ch", "side"), weight_bytes.SHAPES)
def test_dx_reads_the_reduce_weight_once_per_program(monkeypatch, ch, side, layout):
    """At BAM-ResNet-50's shapes (B=64, bf16, W_r in bf16 as the block passes it)
    gate_backward_dx holds W_r's slice (all of K) and reads it once per program, at most a
    quarter of one read per tile; NCHW at K = 64 holds none (registers: see _dx_tile) and
    reads its [BR, K] slice per tile. Either way at most dy's bytes."""
    b, k = 64, ch // 16

    def t(*shape, fmt=torch.contiguous_format):
        return torch.empty(*shape, device="meta", dtype=torch.bfloat16).contiguous(
            memory_format=fmt
        )

    fmt = _fmt(layout)
    dy, c, s = t(b, ch, side, side, fmt=fmt), t(b, ch), t(b, 1, side, side)
    w, dr = t(k, ch), t(b, k, side, side, fmt=torch.channels_last)
    ((kernel, grid, meta),) = _launch_meta(
        monkeypatch, lambda: kernels.gate_backward_dx(dy, c, s, False, w, dr, c)
    )
    assert kernel is kernels._dx_kernel
    d, ll = (side * side, ch) if layout == "channels_last" else (ch, side * side)
    tiles = b * -(-d // meta["BR"]) * -(-ll // meta["BL"])
    slice_bytes = k * (meta["BL"] if layout == "channels_last" else meta["BR"]) * 2
    x_bytes = dy.numel() * 2
    held = meta["BK"] >= k
    assert held == (layout == "channels_last" or k <= 32)
    reads = grid[0] if held else tiles
    assert reads * slice_bytes <= x_bytes, (reads, slice_bytes, x_bytes)
    if held:
        assert grid[0] * 4 <= tiles, (grid, tiles)


# W_r's bytes loaded over x's (dy's), counted under the interpreter by tests/cuda/
# weight_bytes.py (its main prints the table), with W_r in x's dtype as the block passes it.
# pool_reduce with one 32-pixel tile a program: 0.50 / 1.02 / 2.29 at 256@56 / 512@28 /
# 1024@14, either dtype and layout (W_r in float32 under bf16, as the block passed it then:
# 1.00 / 2.04 / 4.57; gate_backward_dx in NCHW at 1024@14: 1.31).


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_reduce_loads_fewer_weight_bytes_than_x_bytes(dtype, layout):
    """pool_reduce at BAM-ResNet-50's block shapes loads x once and fewer bytes of W_r than of
    x. Its programs cannot hold all of W_r ([h, C]: 64 x 1024 at the last block) between
    pixel tiles, so each covers enough pixels per read of W_r (see _pool_tile). One image: the
    grid is images x pixel tiles, so the ratio does not depend on B."""
    gen = torch.Generator().manual_seed(0)
    for ch, side in weight_bytes.SHAPES:
        x_bytes, x_read, w_read = weight_bytes.pool_reduce(ch, side, dtype, _fmt(layout), gen)
        assert x_read == x_bytes
        assert w_read <= x_bytes, (ch, side, w_read / x_bytes)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dx_loads_fewer_weight_bytes_than_dy_bytes(dtype, layout):
    """gate_backward_dx likewise, counted (the test above computes it from the grid): dy
    loaded once, and fewer bytes of W_r than of dy, with the grid scaled to one image
    (tests/cuda/weight_bytes.py: a bound on B = 64's ratio)."""
    gen = torch.Generator().manual_seed(0)
    for ch, side in weight_bytes.SHAPES:
        x_bytes, x_read, w_read = weight_bytes.gate_backward_dx(ch, side, dtype, _fmt(layout), gen)
        assert x_read == x_bytes
        assert w_read <= x_bytes, (ch, side, w_read / x_bytes)


def test_the_finishing_sum_takes_every_part_at_once_at_bam_resnet50_shapes(monkeypatch):
    """The last program of an image sums its partials in [parts, columns] tiles that hold all
    the parts (at most 128) and about 4096 partials: a few steps, not one per 8 parts."""
    b = 64
    for ch, side in ((256, 56), (512, 28), (1024, 14)):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.empty(b, ch, side, side, device="meta", dtype=torch.bfloat16)
            x = x.contiguous(memory_format=fmt)
            c, s = torch.empty(b, ch, device="meta"), torch.empty(b, 1, side, side, device="meta")
            w = torch.empty(ch // 16, ch, device="meta")
            seen = _launch_meta(monkeypatch, lambda x=x, c=c, s=s, w=w: (
                kernels.gate_backward_reduce(x, x, c, s, False, tickets=kernels.counters(x)),
                kernels.pool_reduce(x, w, tickets=kernels.counters(x)),
            ))  # fmt: skip
            (_, _, bwd), (_, _, pool) = seen
            n_lt = -(-(side * side if fmt == torch.contiguous_format else ch) // bwd["BL"])
            n_rt = -(-(ch if fmt == torch.contiguous_format else side * side) // bwd["BR"])
            n_pt = -(-side * side // pool["BP"])
            for parts, p_tile, n_tile in ((n_lt, bwd["FIN_PR"], bwd["FIN_NR"]),
                                          (n_rt, bwd["FIN_PC"], bwd["FIN_NC"]),
                                          (n_pt, pool["FIN_P"], pool["FIN_N"])):  # fmt: skip
                assert p_tile >= parts and p_tile * n_tile <= 4096, (ch, fmt, parts, p_tile)
