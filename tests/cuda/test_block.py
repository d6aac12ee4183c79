"""The block's CUDA path (torch_bam.cuda.block) on CPU, under the Triton interpreter.

With ``set_backend("triton")`` a BAM block takes the CUDA path on CPU tensors: the same ops,
autograd and kernels as on a GPU. Checked against the plain path (backend "reference"):
outputs, every gradient and the BatchNorm statistics, both layouts, float32 and bfloat16
autocast; then the ATen op count against the seed's block, host syncs, saved memory,
second-order gradients and torch.compile. Tiny shapes: the interpreter is slow.
"""

import copy
from collections import Counter

import pytest
import torch
from torch import nn

from tests.cuda.conftest import IN_PROCESS
from tests.cuda.launches import SYNCS, TRITON, count_step
from tests.helpers import randomize_
from tests.reference.seed_bam import BAM as SeedBAM
from torch_bam import BAM, dispatch
from torch_bam.functional import set_backend

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _triton_backend():
    if not IN_PROCESS:
        pytest.skip("triton was imported without the interpreter: see test_in_a_subprocess")
    set_backend("triton")
    yield
    set_backend("auto")


def _plain():
    """The plain module path: what every other test checks against the seed."""

    class Plain:
        def __enter__(self):
            set_backend("reference")

        def __exit__(self, *exc):
            set_backend("triton")

    return Plain()


def _step(block, x, grad, precision):
    """One training forward + backward; (y, dx, param grads, buffers)."""
    x = x.detach().clone().requires_grad_(x.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = block(x)
    y.backward(grad.to(y.dtype))
    grads = {n: p.grad for n, p in block.named_parameters()}
    buffers = {n: b.clone() for n, b in block.named_buffers()}
    return y, x.grad, grads, buffers


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _compare(block, x, precision="fp32"):
    """The CUDA path against the plain path: in float32 closely; in bf16 autocast each error
    against a float64 run of the plain path is at most about twice the plain path's own."""
    assert dispatch.block_path(block, x) == "cuda"
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    plain = copy.deepcopy(block)
    ours = _step(block, x, grad, precision)
    with _plain():
        theirs = _step(plain, x, grad, precision)
        ref = _step(copy.deepcopy(plain).double(), x.double(), grad.double(), "fp32")
    names = ["y", "dx"]
    values = [(ours[0], theirs[0], ref[0]), (ours[1], theirs[1], ref[1])]
    if x.requires_grad is False:
        assert ours[1] is None and theirs[1] is None
        names, values = names[:1], values[:1]
    for n in ours[2]:
        if theirs[2][n] is None:
            assert ours[2][n] is None, n
            continue
        names.append(n)
        values.append((ours[2][n], theirs[2][n], ref[2][n]))
    for n in ours[3]:
        if n.endswith("num_batches_tracked"):
            assert torch.equal(ours[3][n], theirs[3][n]), n
            continue
        names.append(n)
        values.append((ours[3][n], theirs[3][n], ref[3][n]))
    for name, (a, b, r) in zip(names, values, strict=True):
        assert torch.isfinite(a).all(), name
        if precision == "fp32" and r.abs().max() < 1e-9:
            # Zero in exact maths (the bias of a conv before a training BatchNorm): both paths
            # give rounding noise of a cancelling sum, which only has to stay noise.
            assert _max_err(a, r) <= 1e-4 and _max_err(b, r) <= 1e-4, name
        elif precision == "fp32":
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        elif r.abs().max() < 1e-9:
            # The same cancelling sum in bf16: noise of a few bf16 ulps (2^-8) of its O(1)
            # terms (the plain bf16 path's own noise can be larger); a wrong gradient would be
            # of the terms' own size.
            assert _max_err(a, r) <= max(3e-2, 2 * _max_err(b, r)), name
        else:
            # (+ a few bf16 ulps: some grads are zero in exact maths, the biases before a BN)
            scale = max(1.0, r.abs().max().item())
            assert _max_err(a, r) <= 2 * _max_err(b, r) + 1e-2 * scale, name


def _x(shape=(3, 32, 6, 5), layout="nchw", requires_grad=True, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_training_matches_plain_path(layout, precision):
    _compare(randomize_(BAM(32)).train(), _x(layout=layout), precision)


def test_product_and_a_wider_gate_match_plain_path():
    block = randomize_(BAM(32, reduction_ratio=4, combine="product", channel_mlp_layers=2))
    _compare(block.train(), _x(layout="channels_last"))


def test_frozen_parameters_frozen_batchnorm_and_input_without_grad():
    block = randomize_(BAM(32)).train()
    block.spatial_att.gate_s.gate_s_bn_di_0.eval()  # frozen BN: running statistics
    block.channel_att.gate_c[1].eval()
    for p in block.spatial_att.gate_s.gate_s_conv_reduce0.parameters():
        p.requires_grad_(False)
    _compare(block, _x(requires_grad=False))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_train_like_the_plain_path(dtype):
    """A model converted with .half() / .bfloat16() (no autocast): its BatchNorm statistics
    stay in the dtype the device's batch-norm kernels give and take (CPU: the model's)."""
    block = randomize_(BAM(32)).train().to(dtype)
    x = _x(layout="channels_last").detach().to(dtype).requires_grad_()
    assert dispatch.block_path(block, x) == "cuda"
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    plain = copy.deepcopy(block)
    ours = _step(block, x, grad, "fp32")
    with _plain():
        theirs = _step(plain, x, grad, "fp32")
        ref = _step(copy.deepcopy(plain).double(), x.double(), grad.double(), "fp32")
    pairs = [("y", 0), ("dx", 1)]
    for name, i in pairs:
        assert ours[i].dtype == dtype, name
        assert _max_err(ours[i], ref[i]) <= 2 * _max_err(theirs[i], ref[i]) + 2e-2, name
    for n, g in ours[2].items():
        assert g.dtype == dtype, n
        scale = max(1.0, ref[2][n].abs().max().item())
        assert _max_err(g, ref[2][n]) <= 2 * _max_err(theirs[2][n], ref[2][n]) + 2e-2 * scale, n
    for n, b in ours[3].items():
        if not n.endswith("num_batches_tracked"):
            assert _max_err(b, ref[3][n]) <= 2 * _max_err(theirs[3][n], ref[3][n]) + 1e-2, n


# The interpreter computes tl.sigmoid with NumPy's exp, which warns where exp(-logit) overflows
# to inf (the sigmoid is then exactly 0, as on a GPU): the warning is NumPy's, not a wrong value.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_weights_changed_between_steps_are_cast_again():
    """The compute-dtype copies of the weights are reused only while the weights are the same
    tensors at the same version: an optimizer's in-place step, new tensors in their place
    (torch.func.functional_call) each give the new weights' results."""
    block = randomize_(BAM(32)).eval()
    x = _x(layout="channels_last", requires_grad=False)

    def run(m, params=None):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x) if params is None else torch.func.functional_call(m, params, (x,))

    run(block)
    with torch.no_grad():
        for p in block.parameters():
            p.mul_(1.5)  # in place, as an optimizer step
    ours = run(block)
    with _plain():
        expected = run(block)
    torch.testing.assert_close(ours, expected, rtol=2e-2, atol=2e-2)
    for scale in (0.5, 2.0):  # fresh tensors each call, freed after it
        params = {n: p * scale for n, p in block.named_parameters()}
        ours = run(block, params)
        with _plain():
            expected = run(block, params)
        torch.testing.assert_close(ours, expected, rtol=2e-2, atol=2e-2)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("change", ["p.data.mul_", "p.data = ...", "vector_to_parameters"])
def test_weights_changed_behind_autograds_back_are_seen(change):
    """Changes of a weight's values that keep its tensor and its version counter (a
    hand-written EMA, many third-party optimizers) give the new weights' results under
    autocast: the bf16 copies are not reused from an earlier call."""
    block = randomize_(BAM(32)).eval()
    x = _x(layout="channels_last", requires_grad=False)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return block(x)

    before = run()
    params = list(block.parameters())
    if change == "p.data.mul_":
        for p in params:
            p.data.mul_(-1.5)
    elif change == "p.data = ...":
        for p in params:
            p.data = p.data * -1.5
    else:
        vec = torch.nn.utils.parameters_to_vector(params)
        torch.nn.utils.vector_to_parameters(vec * -1.5, params)
    ours = run()
    with _plain():
        expected = run()
    assert (expected - before).abs().max() > 0.1  # the change matters
    torch.testing.assert_close(ours, expected, rtol=2e-2, atol=2e-2)


def test_inference_casts_the_weights_in_one_launch(monkeypatch):
    """Without a cache, each bf16 forward casts the block's weights again, in one
    _foreach_copy_: the MLP's and the 3x3 convs' weights and biases (the reduce conv's weight
    goes to x's dtype, float32 here, so it is not cast; its bias is read as it is)."""
    block = randomize_(BAM(64)).eval()
    x = _x((2, 64, 5, 5), layout="channels_last", requires_grad=False)
    copies = []
    real = torch._foreach_copy_

    def foreach_copy(dst, src):
        copies.append(src)
        return real(dst, src)

    monkeypatch.setattr(torch, "_foreach_copy_", foreach_copy)
    for _ in range(2):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            block(x)
    reduce_w = block.spatial_att.gate_s[0].weight
    assert len(copies) == 2 and len(copies[0]) == 2 + 2 + 2 * 3  # 2 Linear, 3 convs (w, b)
    assert all(t is not reduce_w for t in copies[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_reduce_weight_reaches_its_kernels_in_x_dtype(monkeypatch, precision):
    """pool_reduce and gate_backward_dx read W_r in x's dtype (then fewer bytes of it than of
    x at BAM-ResNet-50's shapes: tests/cuda/test_kernels.py). The block casts it once a step,
    in the _foreach_copy_ of its other weights, and hands both kernels that cast (bf16
    autocast on bf16 x), or the parameter itself (float32): neither kernel casts per call."""
    from torch_bam.cuda import kernels

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    block = randomize_(BAM(64)).train()
    x = _x((2, 64, 5, 5), layout="channels_last", requires_grad=False).to(dtype)
    seen = {}
    for name, pos in (("pool_reduce", 1), ("gate_backward_dx", 4)):
        real = getattr(kernels, name)

        def spy(*a, _real=real, _name=name, _pos=pos, **kw):
            seen[_name] = a[_pos] if len(a) > _pos else kw["w_reduce"]
            return _real(*a, **kw)

        monkeypatch.setattr(kernels, name, spy)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = block(x.requires_grad_())
    y.backward(torch.randn_like(y))
    w = block.spatial_att.gate_s[0].weight
    assert sorted(seen) == ["gate_backward_dx", "pool_reduce"]
    for name, t in seen.items():
        assert t.dtype == dtype, (name, t.dtype)
        assert (t is w) == (precision == "fp32"), name


def test_the_counters_are_made_per_step_and_left_at_zero():
    """The block makes its kernels' counters in its forward and hands them to its backward
    (none kept in a module, which CUDA graphs could not own); they are zero after each."""
    block, x = randomize_(BAM(32)).train(), _x()
    y = block(x)
    saved = [t for t in y.grad_fn.saved_tensors if t.dtype == torch.int32]
    assert len(saved) == 1 and torch.equal(saved[0], torch.zeros(x.shape[0], dtype=torch.int32))
    y.backward(torch.randn_like(y))
    assert torch.equal(saved[0], torch.zeros(x.shape[0], dtype=torch.int32))
    z = block(x)
    assert [t for t in z.grad_fn.saved_tensors if t.dtype == torch.int32][0] is not saved[0]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_inference_matches_plain_path(layout):
    block = randomize_(BAM(32)).eval()
    x = _x(layout=layout, requires_grad=False)
    with torch.no_grad():
        assert dispatch.block_path(block, x) == "cuda"
        y = block(x)
        with _plain():
            expected = block(x)
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_blocks_it_does_not_take_use_the_plain_path():
    block = BAM(32)
    x = _x()
    block.spatial_att.register_forward_hook(lambda *a: None)  # the plain path calls the gates
    assert dispatch.block_path(block, x) == "plain"
    on_sequential = BAM(32)
    on_sequential.channel_att.gate_c.register_forward_pre_hook(lambda *a: None)
    assert dispatch.block_path(on_sequential, x) == "plain"
    with torch.nn.modules.module.register_module_forward_hook(lambda *a: None):
        assert dispatch.block_path(BAM(32), x) == "plain"  # a global hook sees every layer
    assert dispatch.block_path(BAM(32), x) == "cuda"
    folded = BAM(32).eval().fuse_for_inference()  # Identity where the BNs were
    assert dispatch.block_path(folded, x) == "plain"
    assert dispatch.block_path(BAM(32), x.double()) == "plain"  # the kernels take fp16-fp32
    inplace, x = BAM(32, inplace=True).eval(), _x(requires_grad=False)
    with torch.no_grad():  # inference in place: the plain path's in-place gate
        assert dispatch.block_path(inplace, x) == "plain"
        assert inplace(x) is x


# ---------------------------------------------------------------------------------------------
# What the path launches, for one block's training step (tests/cuda/launches.py says how it
# counts): at most 30 in bf16 autocast, channels_last, C = 256 (about 66 ATen ops and 4
# Triton launches before this path was made lean), and fewer than the seed's block in every
# mode.

MODES = [(p, f) for p in ("fp32", "bf16") for f in ("nchw", "channels_last")]


@pytest.fixture(scope="module")
def launch_counts():
    """{(precision, layout): (ours, seed's)} for one block at 256@8x8, computed once."""
    if not IN_PROCESS:
        pytest.skip("triton was imported without the interpreter: see test_in_a_subprocess")
    set_backend("triton")
    out = {}
    try:
        for precision, layout in MODES:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            fmt = CL if layout == "channels_last" else torch.contiguous_format
            x = _x((2, 256, 8, 8), layout, requires_grad=False).to(dtype)
            ours = BAM(256).to(memory_format=fmt).train()
            seed = SeedBAM(256).to(memory_format=fmt).train()
            out[precision, layout] = tuple(
                count_step(m, x, precision, pytest.MonkeyPatch()) for m in (ours, seed)
            )
    finally:
        set_backend("auto")
    return out


@pytest.mark.parametrize(("precision", "layout"), MODES)
def test_launches_fewer_kernels_than_the_seed_block(launch_counts, precision, layout):
    ours, seed = launch_counts[precision, layout]
    assert "aten.convolution_backward.default" in seed  # both really ran forward + backward
    assert "aten.convolution_backward.default" in ours
    # pool + reduce, channel MLP, gate; the gate's reductions, the MLP's backward, dx
    assert ours.count(TRITON) == 6
    assert len(ours) < len(seed), f"{len(ours)} vs the seed's {len(seed)}:\n{Counter(ours)}"


def test_at_most_30_launches_in_bf16_channels_last(launch_counts):
    ours, _ = launch_counts["bf16", "channels_last"]
    assert len(ours) <= 30, f"{len(ours)} launches:\n{Counter(ours)}"


def test_weights_are_cast_once_per_step(launch_counts):
    ours, _ = launch_counts["bf16", "channels_last"]
    assert ours.count("aten._to_copy.default") == 0, Counter(ours)
    assert ours.count("aten._foreach_copy_.default") <= 2, Counter(ours)  # weights, grads


@pytest.mark.parametrize(("precision", "layout"), MODES)
def test_no_host_synchronisation(launch_counts, precision, layout):
    ours, _ = launch_counts[precision, layout]
    assert len(ours) > 20
    assert not SYNCS & set(ours), sorted(SYNCS & set(ours))


def test_the_sync_check_sees_a_sync(monkeypatch):
    block, x = BAM(32).train(), _x()

    def item_in_forward(block, x, layers, _real=dispatch.cuda_block.block_forward):
        float(x.detach().sum())  # a host read
        return _real(block, x, layers)

    monkeypatch.setattr(dispatch.cuda_block, "block_forward", item_in_forward)
    ops = count_step(block, x, "fp32", pytest.MonkeyPatch())
    assert SYNCS & set(ops)


# ---------------------------------------------------------------------------------------------
# Memory, second order, compiler


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_saves_at_most_1_4x_the_input_for_backward(precision):
    """Activation memory: what autograd keeps of this block, parameters and their bf16 casts
    (a few KB per block, whatever the batch) aside: x and, at r = 16, six C/16-channel maps
    (the spatial BatchNorms' inputs and ReLUs' outputs: kept, not recomputed, since on a GPU
    the recomputation's launches cost more than these bytes), about 1.39x."""
    block = BAM(128).train()
    x = _x((2, 128, 16, 16), "channels_last")
    if precision == "bf16":
        x = x.detach().bfloat16().requires_grad_()
    params = {p.data_ptr() for p in block.parameters()}
    shapes = {tuple(p.shape) for p in block.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params and tuple(t.shape) not in shapes:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = block(x)
    assert y.grad_fn is not None and saved
    ratio = sum(saved.values()) / (x.numel() * x.element_size())
    assert 1.0 <= ratio <= 1.4, ratio


def test_second_order_gradients_raise_a_clear_error():
    block, x = BAM(32).train(), _x()
    (dx,) = torch.autograd.grad(block(x).sum(), x)  # first order works
    assert dx.shape == x.shape
    with pytest.raises(RuntimeError, match="second-order gradients"):
        torch.autograd.grad(block(x).sum(), x, create_graph=True)


def test_compiled_network_trains_without_graph_breaks():
    torch._dynamo.reset()

    def net():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), BAM(32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(32, 5),
        )  # fmt: skip

    eager, model = net(), net()
    for m in (eager, model):  # a frozen reduce conv: backward skips its weight grad
        m[1].spatial_att.gate_s.gate_s_conv_reduce0.weight.requires_grad_(False)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # breaks would raise
    x = torch.randn(3, 3, 6, 5)
    for m in (compiled, eager):
        m(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters(), strict=True):
        if not q.requires_grad:
            assert p.grad is None and q.grad is None, name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b), c in zip(model.named_buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("precision", "layout"), [("fp32", "nchw"), ("bf16", "channels_last")])
def test_fake_implementations_match_the_ops(monkeypatch, precision, layout):
    """What torch.compile assumes of the ops' outputs (shapes, dtypes, strides) is what they
    return (a bf16 BatchNorm's statistics: float32 from the kernel, bf16 by its meta function)."""
    from torch_bam.cuda import block as cb

    args = {}
    for name in ("_forward", "_backward"):
        real = getattr(cb, name)
        monkeypatch.setattr(cb, name, lambda *a, _n=name, _r=real, **kw: (
            args.__setitem__(_n, a), _r(*a, **kw))[1])  # fmt: skip
    block = randomize_(BAM(32)).train()
    block.spatial_att.gate_s.gate_s_bn_di_1.eval()  # a frozen BN too
    x = _x(layout=layout)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = block(x)
    y.sum().backward()
    checks = ("test_schema", "test_faketensor")
    _, x, p, wc, spec = args["_forward"]
    fwd = (x, cb._flat(p), cb._flat(wc), *cb._op_args(spec))
    _, dy, x, sv, p, wc, spec, need_x, need_wr = args["_backward"]
    bwd = (dy, x, cb._flat(sv), cb._flat(p), cb._flat(wc), *cb._op_args(spec), need_x, need_wr)
    for op, op_args in ((cb._block_op, fwd), (cb._block_backward_op, bwd)):
        result = torch.library.opcheck(op, op_args, test_utils=checks)
        assert set(result.values()) == {"SUCCESS"}, result
