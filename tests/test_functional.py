"""bam_gate: the registered op against the reference maths, in every backend and layout."""

import pytest
import torch

from tests.helpers import TOLERANCES, assert_close, randomize_
from torch_bam import BAM, functional
from torch_bam.functional import bam_gate, bam_gate_ref

SHAPES = [(2, 17, 5, 7), (1, 3, 1, 9), (3, 8, 4, 1), (2, 32, 6, 6)]


def _inputs(shape, dtype=torch.float32, layout="nchw", seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # a non-contiguous view
        x = torch.randn(b, c, h, 2 * w, generator=gen, dtype=torch.float64)[..., ::2]
    cl = 2 * torch.randn(b, c, generator=gen, dtype=torch.float64)
    sl = 2 * torch.randn(b, 1, h, w, generator=gen, dtype=torch.float64)
    return x.to(dtype), cl.to(dtype), sl.to(dtype)


def _run(fn, x, c, s, combine, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (x, c, s)]
    y = fn(*leaves, combine)
    y.backward(grad)
    return y, [t.grad for t in leaves]


@pytest.fixture(params=["auto", "aten"])
def backend(request):
    functional.set_backend(request.param)
    yield request.param
    functional.set_backend("auto")


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_forward_and_grads(backend, combine, layout, shape):
    x, c, s = _inputs(shape, layout=layout)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    y, grads = _run(bam_gate, x, c, s, combine, g)
    y_ref, grads_ref = _run(bam_gate_ref, x, c, s, combine, g)
    assert_close(y, y_ref)
    for name, a, b in zip(("dx", "dc", "ds"), grads, grads_ref, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    if layout == "channels_last" and shape[2] * shape[3] > 1 and shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(0, 5, 3, 4), (2, 5, 0, 4), (2, 5, 3, 0)])
def test_empty_inputs_like_reference(backend, combine, layout, shape):
    x, c, s = _inputs(shape, layout=layout)
    g = torch.randn(shape)
    y, grads = _run(bam_gate, x, c, s, combine, g)
    y_ref, grads_ref = _run(bam_gate_ref, x, c, s, combine, g)
    assert y.shape == shape
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b)  # empty, or zeros (sums over no pixels)
    with torch.no_grad():
        assert bam_gate(x.clone(), c, s, combine, inplace=True).shape == shape


def test_runs_through_the_registered_op():
    x, c, s = (t.requires_grad_() for t in _inputs((2, 4, 3, 3)))
    assert "torch_bam_bam_gate" in type(bam_gate(x, c, s).grad_fn).__name__
    functional.set_backend("reference")
    try:
        assert "torch_bam_bam_gate" not in type(bam_gate(x, c, s).grad_fn).__name__
    finally:
        functional.set_backend("auto")


def test_env_var_forces_reference(monkeypatch):
    monkeypatch.setenv("TORCH_BAM_FORCE_REFERENCE", "1")
    assert functional.get_backend() == "reference"
    x, c, s = (t.requires_grad_() for t in _inputs((2, 4, 3, 3)))
    assert "torch_bam_bam_gate" not in type(bam_gate(x, c, s).grad_fn).__name__


def test_channel_logits_with_trailing_ones():
    x, c, s = _inputs((2, 5, 3, 4))
    c4 = c.reshape(2, 5, 1, 1).requires_grad_()
    y = bam_gate(x, c4, s)
    y.sum().backward()
    assert c4.grad.shape == (2, 5, 1, 1)
    assert_close(y, bam_gate_ref(x, c, s))


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradcheck_float64(combine, layout):
    x, c, s = (t.requires_grad_() for t in _inputs((2, 3, 4, 5), torch.float64, layout))
    assert torch.autograd.gradcheck(lambda *a: bam_gate(*a, combine), (x, c, s))


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradgradcheck_float64(backend, combine, layout):
    x, c, s = (t.requires_grad_() for t in _inputs((2, 3, 4, 5), torch.float64, layout))
    assert torch.autograd.gradgradcheck(lambda *a: bam_gate(*a, combine), (x, c, s))


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_hessian_vector_product_float32_like_reference(backend, combine):
    # float32 on CPU: the first backward is the fused kernel's, unless a graph is wanted.
    x, c, s = _inputs((2, 17, 5, 7))
    v = tuple(torch.randn_like(t) for t in (x, c, s))

    def loss(fn):
        return lambda *a: fn(*a, combine).pow(2).sum()

    _, ours = torch.autograd.functional.hvp(loss(bam_gate), (x, c, s), v)
    _, ref = torch.autograd.functional.hvp(loss(bam_gate_ref), (x, c, s), v)
    for a, b in zip(ours, ref, strict=True):
        assert b.abs().max() > 0  # a real second derivative to compare against
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_opcheck():
    x, c, s = (t.requires_grad_() for t in _inputs((2, 6, 3, 5)))
    torch.library.opcheck(torch.ops.torch_bam.bam_gate.default, (x, c, s, "sum"))
    torch.library.opcheck(torch.ops.torch_bam.bam_gate.default, (x, c, s, "product"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_low_precision_error_at_most_twice_the_reference(dtype, layout):
    shape = (2, 17, 9, 7)
    x64, c64, s64 = _inputs(shape, torch.float64, layout)
    g64 = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact, exact_grads = _run(bam_gate_ref, x64, c64, s64, "sum", g64)
    lo = [t.to(dtype) for t in (x64, c64, s64)]
    y, grads = _run(bam_gate, *lo, "sum", g64.to(dtype))
    y_ref, grads_ref = _run(bam_gate_ref, *lo, "sum", g64.to(dtype))
    assert y.dtype == dtype and all(gr.dtype == dtype for gr in grads)
    rtol, atol = TOLERANCES[dtype]
    for ours, ref, truth in zip(
        [y, *grads], [y_ref, *grads_ref], [exact, *exact_grads], strict=True
    ):
        err = (ours.double() - truth).abs().max()
        ref_err = (ref.double() - truth).abs().max()
        assert err <= 2 * ref_err + atol * 1e-3, (err, ref_err)


def test_mixed_dtypes_promote_like_reference():
    x, c, s = _inputs((2, 4, 3, 3))
    y = bam_gate(x, c.half(), s.half())
    assert y.dtype == torch.float32
    assert_close(y, bam_gate_ref(x, c.half().float(), s.half().float()))


def test_saves_only_x_and_the_gates_for_backward():
    x, c, s = (t.requires_grad_() for t in _inputs((2, 16, 8, 8)))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bam_gate(x, c, s)
    assert sum(saved.values()) == (x.numel() + c.numel() + s.numel()) * 4


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_inplace_writes_into_x(layout):
    x, c, s = _inputs((2, 17, 5, 3), layout=layout)
    expected = bam_gate_ref(x, c, s, "product")
    ptr = x.data_ptr()
    with torch.no_grad():
        out = bam_gate(x, c, s, "product", inplace=True)
    assert out is x and x.data_ptr() == ptr
    assert_close(x, expected)


def test_inplace_refuses_when_autograd_needs_the_input():
    x, c, s = _inputs((2, 4, 3, 3))
    with pytest.raises(RuntimeError, match="inference only"):
        bam_gate(x, c.requires_grad_(), s, inplace=True)


@pytest.mark.parametrize(
    ("c_shape", "s_shape", "match"),
    [((2, 5), (2, 1, 3, 4), "channel_logits"), ((2, 4), (2, 4, 3, 4), "spatial_logits")],
)
def test_bad_shapes_raise_clear_errors(c_shape, s_shape, match):
    with pytest.raises(ValueError, match=match):
        bam_gate(torch.randn(2, 4, 3, 4), torch.randn(c_shape), torch.randn(s_shape))


def test_bad_combine():
    x, c, s = _inputs((2, 4, 3, 3))
    with pytest.raises(ValueError, match="combine"):
        bam_gate(x, c, s, "mean")


def test_module_fx_graph_has_one_gate_node():
    gm = torch.fx.symbolic_trace(randomize_(BAM(32)).eval())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    # One leaf call of bam_gate (so the graph scripts after FX), not the gate's maths ...
    assert targets.count(bam_gate) == 1 and torch.sigmoid not in targets
    # ... which runs the registered op in eager.
    y = gm(torch.randn(2, 32, 6, 6, requires_grad=True))
    assert "torch_bam_bam_gate" in type(y.grad_fn).__name__


def test_op_under_compile_and_export():
    x, c, s = _inputs((2, 6, 4, 4))
    compiled = torch.compile(lambda *a: bam_gate(*a), fullgraph=True, backend="inductor")
    assert_close(compiled(x, c, s), bam_gate_ref(x, c, s))

    class Gate(torch.nn.Module):
        def forward(self, x, c, s):
            return bam_gate(x, c, s)

    ep = torch.export.export(Gate(), (x, c, s))
    assert any(n.target == torch.ops.torch_bam.bam_gate.default for n in ep.graph.nodes)
    assert_close(ep.module()(x, c, s), bam_gate_ref(x, c, s))


def test_batch_one_eval_block_matches_reference():
    bam = randomize_(BAM(17, reduction_ratio=4)).eval()
    x = torch.randn(1, 17, 5, 1)
    y = bam(x)
    functional.set_backend("reference")
    try:
        assert_close(y, bam(x))
    finally:
        functional.set_backend("auto")


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="'triton'"):
        functional.set_backend("cuda")
    assert functional.get_backend() == "auto"


def test_triton_backend_on_cpu_without_the_interpreter_says_how_to_enable_it(monkeypatch):
    pytest.importorskip("triton")
    from torch_bam.cuda import kernels

    monkeypatch.setattr(kernels, "INTERPRETED", False)  # as if TRITON_INTERPRET=1 was not set
    x, c, s = _inputs((1, 2, 3, 3))
    functional.set_backend("triton")
    try:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            bam_gate(x, c, s)
    finally:
        functional.set_backend("auto")


@pytest.mark.parametrize("transform", ["grad", "jacrev", "vmap over grad", "vmap"])
def test_torch_func_transforms_like_reference(backend, transform):
    x, c, s = _inputs((4, 6, 3, 5), torch.float64)

    def run(fn):
        def loss(x, c, s):
            return fn(x, c, s, "product").pow(2).sum()

        if transform == "grad":
            return torch.func.grad(loss, argnums=(0, 1, 2))(x, c, s)
        if transform == "jacrev":
            return torch.func.jacrev(lambda c: fn(x, c, s, "sum").sum((2, 3)))(c)
        if transform == "vmap":
            return torch.func.vmap(lambda *a: fn(*a, "sum"))(x[:, None], c[:, None], s[:, None])
        return torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)))(
            x[:, None], c[:, None], s[:, None]
        )

    ours = torch.utils._pytree.tree_leaves(run(bam_gate))
    ref = torch.utils._pytree.tree_leaves(run(bam_gate_ref))
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
