"""The memory-saving training path equals plain autograd, and keeps ~1x the input for backward."""

import contextlib
import copy
from unittest import mock

import pytest
import torch
from torch import nn

import torch_bam.cpu.block as block_autograd
from tests.helpers import assert_close, randomize_
from torch_bam import BAM, record_attention
from torch_bam.functional import set_backend

CL = torch.channels_last


def _plain():
    """Force the plain autograd path (the one every other test checks against the seed)."""
    return mock.patch.object(block_autograd, "can_use", lambda *a: False)


def _run(block, x, grad, plain=False):
    x = x.detach().clone().requires_grad_(x.requires_grad)
    if plain:
        with _plain():
            y = block(x)
    else:
        y = block(x)
    y.backward(grad)
    params = {n: p.grad for n, p in block.named_parameters()}
    buffers = {n: b.clone() for n, b in block.named_buffers()}
    return y, x.grad, params, buffers


def _compare(block, x, dtype=None):
    assert block_autograd.can_use(block, x)  # the memory-saving path is the one under test
    other = copy.deepcopy(block)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    y, dx, dp, buf = _run(block, x, grad)
    y0, dx0, dp0, buf0 = _run(other, x, grad, plain=True)
    assert_close(y, y0, dtype)
    if x.requires_grad:
        assert_close(dx, dx0, dtype)
    else:
        assert dx is None and dx0 is None
    assert dp.keys() == dp0.keys()
    for name in dp:
        if dp0[name] is None:
            assert dp[name] is None, name
        elif x.dtype == torch.float64:
            assert_close(dp[name], dp0[name], torch.float64)
        else:
            # Parameter grads are sums over the batch and pixels: a looser atol in float32.
            torch.testing.assert_close(dp[name], dp0[name], rtol=1e-4, atol=1e-5, msg=name)
    for name in buf:  # running statistics updated exactly once, as in the plain path
        assert torch.equal(buf[name], buf0[name]), name
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_equals_plain_autograd(dtype, combine, memory_format):
    block = randomize_(BAM(64, reduction_ratio=8, combine=combine)).to(dtype).train()
    x = torch.randn(4, 64, 9, 7, dtype=dtype).contiguous(memory_format=memory_format)
    y = _compare(block, x.requires_grad_(), dtype)
    assert y.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("width", [8, 16])  # narrow (maps kept NCHW in training) and not
def test_equals_plain_autograd_channels_last_model(width):
    # A channels_last model: its conv weights make conv outputs channels_last, which narrow
    # gates turn back to NCHW, in the forward pass and in backward's recompute alike.
    block = randomize_(BAM(8 * width, reduction_ratio=8)).train().to(memory_format=CL)
    x = torch.randn(4, 8 * width, 9, 7).contiguous(memory_format=CL)
    y = _compare(block, x.requires_grad_())
    assert y.is_contiguous(memory_format=CL)


@pytest.mark.parametrize(
    "kwargs", [{"channel_mlp_layers": 2, "num_dilated_convs": 1}, {"num_dilated_convs": 3}]
)
def test_other_structures(kwargs):
    block = randomize_(BAM(32, reduction_ratio=4, **kwargs)).train()
    _compare(block, torch.randn(3, 32, 6, 5, requires_grad=True))


def test_frozen_parameters_input_without_grad_and_frozen_bn():
    block = randomize_(BAM(64, reduction_ratio=8)).train()
    for p in block.channel_att.parameters():
        p.requires_grad_(False)  # the whole channel MLP frozen
    block.spatial_att.gate_s.gate_s_bn_di_0.eval()  # a frozen BN: running statistics
    block.spatial_att.gate_s.gate_s_conv_reduce0.bias.requires_grad_(False)
    _compare(block, torch.randn(4, 64, 8, 8))  # x needs no grad: only the parameters do


def test_eval_mode_with_grad_enabled():
    block = randomize_(BAM(64, reduction_ratio=8)).eval()
    _compare(block, torch.randn(2, 64, 8, 8, requires_grad=True))


def test_gradcheck_float64():
    block = BAM(32, reduction_ratio=4).double().train()
    x = torch.randn(3, 32, 5, 4, dtype=torch.float64, requires_grad=True)
    assert block_autograd.can_use(block, x)
    # fast_mode checks random projections v^T J: one backward instead of one per output.
    assert torch.autograd.gradcheck(block, (x,), fast_mode=True)
    xc = x.detach().contiguous(memory_format=CL).requires_grad_()
    assert torch.autograd.gradcheck(block, (xc,), fast_mode=True)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_hessian_vector_product_like_reference(mode):
    # Second derivatives (create_graph=True) through the memory-saving path, e.g. for a
    # gradient penalty or torch.autograd.functional.hvp, equal plain autograd's.
    block = randomize_(BAM(64, reduction_ratio=8)).double().train(mode == "train")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 64, 6, 5, dtype=torch.float64, generator=gen)
    v = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    x.requires_grad_()
    assert block_autograd.can_use(block, x)

    def loss(t):
        return block(t).pow(2).sum()

    _, ours = torch.autograd.functional.hvp(loss, x, v)
    # The same with every parameter's second-order term: grad of (dloss/dx . v).
    dx = torch.autograd.grad(loss(x), x, create_graph=True)[0]
    ours_p = torch.autograd.grad((dx * v).sum(), list(block.parameters()), allow_unused=True)
    set_backend("reference")
    try:
        _, ref = torch.autograd.functional.hvp(loss, x, v)
        dx = torch.autograd.grad(loss(x), x, create_graph=True)[0]
        ref_p = torch.autograd.grad((dx * v).sum(), list(block.parameters()), allow_unused=True)
    finally:
        set_backend("auto")
    assert ref.abs().max() > 0
    assert_close(ours, ref, torch.float64)
    for (name, _), a, b in zip(block.named_parameters(), ours_p, ref_p, strict=True):
        if b is None:
            assert a is None or not a.any(), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_gradgradcheck_float64(backend):
    # "reference" is the way around any doubt: plain ATen ops all the way through.
    block = BAM(16, reduction_ratio=2, dilation=1).double().train()
    x = torch.randn(2, 16, 2, 2, dtype=torch.float64, requires_grad=True)
    assert block_autograd.can_use(block, x)
    set_backend(backend)
    try:
        assert torch.autograd.gradgradcheck(block, (x,), fast_mode=True)
    finally:
        set_backend("auto")


def _saved_bytes(block, x):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return sum(n for ptr, n in storages.items() if ptr not in params) / (x.numel() * 4)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_saves_about_one_input_for_backward(memory_format):
    block = BAM(256).train().to(memory_format=memory_format)
    x = torch.randn(4, 256, 16, 16).contiguous(memory_format=memory_format).requires_grad_()
    ours = _saved_bytes(block, x)
    with _plain():
        plain = _saved_bytes(block, x)
    # x (1.0), the reduce's and the last dilated conv's outputs (1/16 each), M_c and M_s;
    # plain autograd keeps 6 maps of C/16. The target is 1.15.
    assert 1.1 < ours <= 1.15
    assert plain > 1.3


def test_record_attention_and_hooks_take_the_plain_path_and_fire_once():
    # Hooks see the modules' own computation: the room declines a block with any hook.
    block = BAM(64, reduction_ratio=8).train()
    x = torch.randn(4, 64, 8, 8, requires_grad=True)
    calls = []
    block.spatial_att.register_forward_hook(lambda *_: calls.append(1))
    with record_attention(block) as maps:
        assert not block_autograd.can_use(block, x)
        block(x).sum().backward()
    assert maps[""].spatial_logits.shape == (4, 1, 8, 8)
    assert maps[""].channel_logits.shape == (4, 64)
    assert calls == [1]  # once per forward


@pytest.mark.parametrize(
    "setup",
    [
        "reference backend",
        "inner backward hook",
        "inner forward hook",
        "folded",
        "no grad",
        "narrow",
    ],
)
def test_falls_back_to_plain_autograd(setup):
    block = BAM(64, reduction_ratio=16 if setup == "narrow" else 8).train()  # narrow: C/r = 4
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    assert setup == "narrow" or block_autograd.can_use(block, x)  # only the setup prevents it
    if setup == "reference backend":
        set_backend("reference")
    elif setup == "inner backward hook":
        block.spatial_att.gate_s.gate_s_conv_di_0.register_full_backward_hook(lambda *a: None)
    elif setup == "inner forward hook":
        block.channel_att.gate_c[0].register_forward_hook(lambda *a: None)
    elif setup == "folded":
        block.eval().fuse_for_inference().train()
    try:
        if setup == "no grad":
            with torch.no_grad():
                assert not block_autograd.can_use(block, x)
        else:
            assert not block_autograd.can_use(block, x)
            block(x).sum().backward()  # and the plain path still trains
            assert x.grad is not None
    finally:
        set_backend("auto")


_MODIFIED = {
    "reduce conv": "spatial_att.gate_s.gate_s_conv_reduce0.weight",
    "dilated conv": "spatial_att.gate_s.gate_s_conv_di_1.weight",
    "final conv": "spatial_att.gate_s.gate_s_conv_final.weight",
    "MLP linear": "channel_att.gate_c.0.weight",
    "BN weight": "spatial_att.gate_s.gate_s_bn_di_0.weight",
    "BN1d weight": "channel_att.gate_c.1.weight",
    "frozen BN running var": "spatial_att.gate_s.gate_s_bn_di_0.running_var",
}
# Plain autograd keeps the ReLUs' outputs and so never needs a bias in backward; the
# memory-saving path recomputes the ReLUs' masks from the biases, so it checks them too.
_BIASES = {
    "BN bias": "spatial_att.gate_s.gate_s_bn_reduce0.bias",
    "dilated conv bias": "spatial_att.gate_s.gate_s_conv_di_0.bias",
    "MLP bias": "channel_att.gate_c.0.bias",
}


@pytest.mark.parametrize(
    ("what", "path"),
    [(w, p) for w in _MODIFIED for p in ("memory-saving", "plain")]
    + [(w, "memory-saving") for w in _BIASES],
)
def test_weights_modified_in_place_before_backward_raise(what, path):
    # Plain autograd refuses to backpropagate with weights changed since the forward pass;
    # the memory-saving path recomputes from the module's weights, so it must check too.
    block = BAM(64, reduction_ratio=8).train()
    block.spatial_att.gate_s.gate_s_bn_di_0.train(not what.startswith("frozen"))
    x = torch.randn(2, 64, 6, 6, requires_grad=True)
    assert block_autograd.can_use(block, x)
    with _plain() if path == "plain" else contextlib.nullcontext():
        y = block(x)
    name = {**_MODIFIED, **_BIASES}[what]
    tensor = block.get_buffer(name) if "running" in name else block.get_parameter(name)
    with torch.no_grad():
        tensor.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_autocast_bfloat16_cpu():
    block = randomize_(BAM(64, reduction_ratio=8)).train()
    x = torch.randn(4, 64, 8, 8, requires_grad=True)
    grad = torch.randn(4, 64, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, dx, dp, _ = _run(block, x, grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y0, dx0, dp0, _ = _run(copy.deepcopy(block), x, grad, plain=True)
    assert_close(y, y0, torch.bfloat16)
    assert_close(dx, dx0, torch.bfloat16)
    for name in dp:
        rel = (dp[name] - dp0[name]).norm() / dp0[name].norm().clamp_min(1e-12)
        assert rel < 0.05, name


def test_trains_inside_a_network():
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), BAM(32, reduction_ratio=4), nn.Flatten(), nn.LazyLinear(2)
    )
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    net(x)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------
# Backward uses what forward saved, never the modules' live state


def _reference():
    """The plain path with the reference gate: what the memory-saving path must equal."""

    class Reference:
        def __enter__(self):
            set_backend("reference")

        def __exit__(self, *exc):
            set_backend("auto")

    return Reference()


def _both(fn, block):
    """``fn(block)`` on the memory-saving path, then on a copy of the block on the reference
    path; the two results and the parameters' grads of each."""
    other = copy.deepcopy(block)
    ours = fn(block)
    with _reference():
        ref = fn(other)
    grads = [{n: p.grad for n, p in b.named_parameters()} for b in (block, other)]
    return ours, ref, grads[0], grads[1]


def _assert_grads_equal(ours, ref):
    assert ours.keys() == ref.keys()
    for name in ref:
        assert (ours[name] is None) == (ref[name] is None), name
        if ref[name] is not None:
            torch.testing.assert_close(ours[name], ref[name], rtol=1e-9, atol=1e-10, msg=name)


def test_functional_call_fast_weights_get_the_gradient():
    # MAML-style fast weights: the gradient flows to the tensors the forward used.
    block = randomize_(BAM(64, reduction_ratio=8)).double().train()
    x = torch.randn(3, 64, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def run(b):
        fast = {n: 2 * p for n, p in b.named_parameters()}
        assert block_autograd.can_use(b, x) == (b is block)
        torch.func.functional_call(b, fast, (x,)).pow(2).sum().backward()

    _, _, ours, ref = _both(run, block)
    assert all(g is not None for g in ref.values())
    _assert_grads_equal(ours, ref)


def test_maml_outer_gradient_with_create_graph():
    block = randomize_(BAM(64, reduction_ratio=8)).double().train()
    gen = torch.Generator().manual_seed(4)
    x1, x2 = (torch.randn(3, 64, 6, 5, dtype=torch.float64, generator=gen) for _ in range(2))

    def run(b):
        params = dict(b.named_parameters())
        inner = torch.func.functional_call(b, params, (x1,)).pow(2).mean()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        fast = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads, strict=True)}
        torch.func.functional_call(b, fast, (x2,)).pow(2).mean().backward()

    _, _, ours, ref = _both(run, block)
    _assert_grads_equal(ours, ref)


@pytest.mark.parametrize("switch", ["eval", "train"])
def test_mode_switch_between_forward_and_backward_changes_nothing(switch):
    # BatchNorm's mode is the forward's: backward does not read module.training again.
    block = randomize_(BAM(64, reduction_ratio=8)).double().train(switch == "train")
    x = torch.randn(3, 64, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def run(b):
        xx = x.clone().requires_grad_()
        y = b(xx)
        b.train(switch != "train")
        y.pow(2).sum().backward()
        return xx.grad

    dx, dx_ref, ours, ref = _both(run, block)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-9, atol=1e-10)
    _assert_grads_equal(ours, ref)


@pytest.mark.parametrize("tied", ["dilated conv weights", "BN weights", "MLP and spatial BN"])
def test_tied_parameters_get_the_sum_of_their_contributions(tied):
    block = randomize_(BAM(64, reduction_ratio=8)).double().train()
    g, c = block.spatial_att.gate_s, block.channel_att.gate_c
    if tied == "dilated conv weights":
        g.gate_s_conv_di_1.weight = g.gate_s_conv_di_0.weight
    elif tied == "BN weights":
        g.gate_s_bn_di_1.weight = g.gate_s_bn_di_0.weight
    else:  # one BatchNorm weight in both gates (both hidden widths are 8)
        c[1].weight = g.gate_s_bn_reduce0.weight
    x = torch.randn(3, 64, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def run(b):
        assert block_autograd.can_use(b, x.requires_grad_()) == (b is block)
        b(x).pow(2).sum().backward()

    _, _, ours, ref = _both(run, block)
    _assert_grads_equal(ours, ref)


# ---------------------------------------------------------------------------------------------
# torch.func transforms


def _func_block(mode):
    block = randomize_(BAM(64, reduction_ratio=8)).double().train(mode == "train")
    if mode == "train":
        # functorch cannot update running statistics in place (as in plain PyTorch): batch
        # statistics only, as torch.func's own recipe does.
        torch.func.replace_all_batch_norm_modules_(block)
    return block


@pytest.mark.parametrize("backend", ["auto", "aten"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("transform", ["grad", "jacrev", "vmap over grad"])
def test_torch_func_transforms_like_reference(backend, mode, transform):
    block = _func_block(mode)
    params = {n: p.detach() for n, p in block.named_parameters()}
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 64, 5, 4, dtype=torch.float64, generator=gen)

    def loss(p, t):
        return torch.func.functional_call(block, p, (t,)).pow(2).sum()

    def run():
        if transform == "grad":
            return torch.func.grad(loss, argnums=(0, 1))(params, x)
        if transform == "jacrev":
            return torch.func.jacrev(lambda t: block(t).sum((1, 2, 3)))(x)
        # per-sample gradients: vmap over groups of two images
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(
            params, x.reshape(2, 2, *x.shape[1:])
        )

    with _reference():
        ref = run()
    set_backend(backend)
    try:
        ours = run()
    finally:
        set_backend("auto")
    ours, ref = torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(ref)
    assert len(ours) == len(ref) and any(r.abs().max() > 0 for r in ref)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
