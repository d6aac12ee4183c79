"""BAM against the seed's code, the closed-form parameter count, and numerics."""

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from tests.helpers import assert_close, bam_param_count, randomize_
from tests.reference import official_bam, seed_bam
from torch_bam import BAM, ChannelGate, SpatialGate, functional

block_autograd_off = mock.patch("torch_bam.cpu.block.can_use", lambda *a: False)


def _pair(channels=64, seed=0):
    ref = randomize_(seed_bam.BAM(channels), seed)
    ours = BAM(channels)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_state_dict_keys_equal_seed():
    assert list(BAM(64).state_dict()) == list(seed_bam.BAM(64).state_dict())


def test_seed_state_dict_loads_strictly_both_ways():
    ref, ours = _pair()
    back = seed_bam.BAM(64)
    back.load_state_dict(ours.state_dict(), strict=True)
    for (k1, v1), (k2, v2) in zip(ref.state_dict().items(), back.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(4, 64, 14, 14), (3, 128, 7, 9), (2, 32, 1, 1)])
def test_matches_seed(mode, shape):
    ref, ours = _pair(shape[1])
    ref.train(mode == "train")
    ours.train(mode == "train")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, rtol=0, atol=1e-6)
    # Same gradients, and in train mode the same BN running statistics afterwards.
    g = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    y_ref.backward(g)
    y_ours.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_empty_batch_like_reference(mode, memory_format):
    # Plain torch takes a batch of 0; so must every path (the memory-saving one in training).
    # (H or W of 0 is an error in the reference too: the dilated convs need a padded size >= 9.)
    ours = randomize_(BAM(64, reduction_ratio=8)).train(mode == "train")
    ref = copy.deepcopy(ours)
    x = torch.randn(0, 64, 8, 8).contiguous(memory_format=memory_format)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = ours(x_ours)
    y.sum().backward()
    functional.set_backend("reference")
    try:
        ref(x_ref).sum().backward()
    finally:
        functional.set_backend("auto")
    assert y.shape == x.shape and x_ours.grad.shape == x.shape
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)
    for (name, b), b_ref in zip(ours.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, msg=name)


def test_output_actually_depends_on_attention():
    # Guards against a gate that does nothing: F' must differ from 2F and from F.
    _, ours = _pair()
    ours.eval()
    x = torch.randn(2, 64, 8, 8)
    y = ours(x)
    assert not torch.allclose(y, x) and not torch.allclose(y, 2 * x)
    ratio = y / x
    assert ratio.min() > 1 and ratio.max() < 2  # F * (1 + sigmoid(.)) lies in (F, 2F)


def test_product_matches_official_formula():
    off = randomize_(official_bam.BAM(64), 3).eval()
    ours = BAM(64, combine="product").eval()
    with torch.no_grad():
        ours.channel_att.gate_c[0].weight.copy_(off.channel_att.gate_c.gate_c_fc_0.weight)
        ours.channel_att.gate_c[0].bias.copy_(off.channel_att.gate_c.gate_c_fc_0.bias)
        ours.channel_att.gate_c[1].load_state_dict(off.channel_att.gate_c.gate_c_bn_1.state_dict())
        ours.channel_att.gate_c[3].load_state_dict(
            off.channel_att.gate_c.gate_c_fc_final.state_dict()
        )
        ours.spatial_att.load_state_dict(off.spatial_att.state_dict())
    x = torch.randn(2, 64, 10, 10)
    c = ours.channel_att(x)[:, :, None, None]
    s = ours.spatial_att(x)
    expected = x * (1 + torch.sigmoid(c * s))
    assert_close(ours(x), expected)
    assert_close(ours(x), off(x))
    # And it is not the sum formula.
    assert not torch.allclose(ours(x), x * (1 + torch.sigmoid(c + s)), atol=1e-3)


@pytest.mark.parametrize("channels", [64, 256, 512, 1024, 2048])
def test_parameter_count_matches_closed_form(channels):
    n = sum(p.numel() for p in BAM(channels).parameters())
    assert n == bam_param_count(channels)


def test_parameter_counts_from_paper_notes():
    counts = {c: sum(p.numel() for p in BAM(c).parameters()) for c in (64, 256, 512, 1024, 2048)}
    assert counts == {64: 1173, 256: 17361, 512: 68513, 1024: 272193, 2048: 1085057}
    # By hand for C=256, h=16: channel 256*16+16+32+16*256+256 = 8496;
    # spatial 256*16+16+32 + 2*(9*16*16+16+32) + 16+1 = 8865; total 17361.
    assert 8496 + 8865 == counts[256]


@pytest.mark.parametrize(
    "kwargs", [dict(reduction_ratio=8), dict(num_dilated_convs=3), dict(channel_mlp_layers=2)]
)
def test_parameter_count_with_options(kwargs):
    r = kwargs.get("reduction_ratio", 16)
    nd = kwargs.get("num_dilated_convs", 2)
    ml = kwargs.get("channel_mlp_layers", 1)
    n = sum(p.numel() for p in BAM(128, **kwargs).parameters())
    assert n == bam_param_count(128, r, nd, ml)


def test_gates_shapes_and_dilation():
    x = torch.randn(2, 64, 12, 12)
    assert ChannelGate(64).eval()(x).shape == (2, 64)
    assert SpatialGate(64).eval()(x).shape == (2, 1, 12, 12)
    bam = BAM(64, dilation=2, num_dilated_convs=3)
    convs = [m for n, m in bam.spatial_att.gate_s.named_children() if "conv_di" in n]
    assert len(convs) == 3 and all(c.dilation == (2, 2) and c.padding == (2, 2) for c in convs)


# The module's plain autograd path, element by element; the memory-saving path is checked
# against it in tests/cpu/test_block_autograd.py (equal to 1e-10 in float64, and its own gradcheck).
@block_autograd_off
def test_gradcheck_float64():
    bam = randomize_(BAM(32, reduction_ratio=8, dtype=torch.float64)).eval()
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bam, (x,), eps=1e-6, atol=1e-5)
    bam.train()
    assert torch.autograd.gradcheck(bam, (x,), eps=1e-6, atol=1e-5)


@block_autograd_off
def test_gradcheck_product_float64():
    bam = randomize_(BAM(32, reduction_ratio=8, combine="product", dtype=torch.float64)).eval()
    x = torch.randn(2, 32, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bam, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu(dtype):
    bam = randomize_(BAM(64)).eval()
    x = torch.randn(2, 64, 14, 14)
    expected = bam(x)
    with torch.autocast("cpu", dtype=dtype):
        y = bam(x)
    assert torch.isfinite(y).all()
    assert_close(y.float(), expected, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_module_in_other_dtypes(dtype):
    ref = randomize_(BAM(64)).eval()
    bam = BAM(64, dtype=dtype).eval()
    bam.load_state_dict(ref.state_dict())
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    expected = ref.to(torch.float64)(x)  # the same maths in float64
    y = bam(x.to(dtype))
    assert y.dtype == dtype
    assert_close(y.double(), expected, dtype=dtype)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_channels_last(mode):
    bam = randomize_(BAM(64)).train(mode == "train")
    x = torch.randn(4, 64, 9, 11)
    x_cl = x.to(memory_format=torch.channels_last)
    y = bam(x)
    y_cl = bam(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous()
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [32, 128, 256])  # gate widths 2 and 8 (narrow), and 16
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_narrow_gates_keep_batchnorm_inputs_nchw_in_training(channels, channels_last, mode):
    # PyTorch's CPU BatchNorm is several times slower on channels_last maps of fewer than 16
    # channels: in training, narrow gates feed their BatchNorms NCHW maps, even in a
    # channels_last model; wider gates, and every gate in eval, keep the layout they get (in
    # eval the 1x1 convs are the modules' own, so the output is bitwise what FX records).
    bam = randomize_(BAM(channels)).train(mode == "train")
    x = torch.randn(4, channels, 10, 10)
    if channels_last:
        bam, x = bam.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    nchw = []

    class SpyBatchNorm(TorchFunctionMode):  # a hook would send the block to the plain path
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.batch_norm and args[0].dim() == 4:
                nchw.append(args[0].is_contiguous())
            return func(*args, **(kwargs or {}))

    with SpyBatchNorm():
        y = bam(x)
    narrow = channels // 16 < 16
    if (narrow and mode == "train") or (not channels_last and (narrow or mode == "eval")):
        assert nchw == [True] * 3
    elif channels_last:
        assert nchw == [False] * 3  # channels_last maps, as the convs give them
    else:  # a wide gate on NCHW input in training: the reduce's matmul gives a channels_last map
        assert nchw[0] is False
    assert y.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    # Same numbers as the seed's code in either layout.
    ref = seed_bam.BAM(channels).train(mode == "train")
    ref.load_state_dict(bam.state_dict())
    torch.testing.assert_close(y, ref(x.contiguous()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "transposed"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("width", [4, 8])  # channels_last below 8 channels keeps the conv
def test_final_1x1_as_matmul_equals_the_conv(layout, bias, width):
    from torch_bam.cpu.layers import final_1x1 as _final_1x1

    conv = torch.nn.Conv2d(width, 1, 1, bias=bias).double()
    y = torch.randn(3, width, 5, 7, dtype=torch.float64)
    if layout == "channels_last":
        y = y.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        y = y.transpose(2, 3)  # neither layout: falls back to the conv
    y1, y2 = y.clone().requires_grad_(), y.clone().requires_grad_()
    out = _final_1x1(y1, conv.weight, conv.bias)
    ref = conv(y2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    (dy1, dw1) = torch.autograd.grad(out, (y1, conv.weight), g)
    (dy2, dw2) = torch.autograd.grad(ref, (y2, conv.weight), g)
    torch.testing.assert_close(dy1, dy2)
    torch.testing.assert_close(dw1, dw2)


def test_non_contiguous_input():
    bam = randomize_(BAM(64)).eval()
    x = torch.randn(2, 64, 16, 16)
    xt = x.transpose(2, 3)  # a view with permuted strides
    assert not xt.is_contiguous()
    torch.testing.assert_close(bam(xt), bam(xt.contiguous()), rtol=1e-5, atol=1e-6)


def test_nan_and_inf_pass_through():
    bam = randomize_(BAM(64)).eval()
    x = torch.randn(3, 64, 8, 8)
    x[0, 3, 2, 2] = float("nan")
    x[2, 5, 1, 1] = float("inf")
    y = bam(x)  # must not raise
    assert y.shape == x.shape
    assert torch.isnan(y[0]).any() and not torch.isfinite(y[2]).all()
    # In eval mode samples are independent: the clean sample stays finite.
    assert torch.isfinite(y[1]).all()


def test_device_and_dtype_factory_kwargs():
    bam = BAM(64, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in bam.parameters())


def test_repr_names_the_hyperparameters():
    r = repr(BAM(64, dilation=2, combine="product"))
    assert "channels=64" in r and "dilation=2" in r and "combine='product'" in r


# ---------------------------------------------------------------------------------------------
# Batch size 1 in training, and frozen norms


def _bn_state(module):
    state = module.state_dict().items()
    return {k: v.clone() for k, v in state if "running" in k or "batches" in k}


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_batch_one_in_training_uses_running_stats_in_the_channel_gate(backend):
    torch.manual_seed(0)
    bam = randomize_(BAM(64), seed=1).train()
    expected_model = copy.deepcopy(bam)
    expected_model.channel_att.eval()  # running statistics; the spatial gate: batch statistics
    channel_before = _bn_state(bam.channel_att)
    spatial_before = _bn_state(bam.spatial_att)
    x = torch.randn(1, 64, 8, 8, requires_grad=True)
    previous = functional.get_backend()
    functional.set_backend(backend)
    try:
        out = bam(x)
        assert_close(out, expected_model(x))
        out.square().mean().backward()
    finally:
        functional.set_backend(previous)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in bam.parameters())
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # The channel gate's statistics are untouched; the spatial gate's were updated (H*W values).
    for k, v in _bn_state(bam.channel_att).items():
        assert torch.equal(v, channel_before[k]), k
    assert bam.spatial_att.gate_s.gate_s_bn_reduce0.num_batches_tracked == 1
    key = "gate_s.gate_s_bn_reduce0.running_mean"
    assert not torch.equal(_bn_state(bam.spatial_att)[key], spatial_before[key])
    # Every norm is back in training mode.
    assert all(m.training for m in bam.modules())


def test_batch_one_in_training_runs_every_layer_with_its_hooks():
    bam = BAM(64).train()
    called = []
    for name, m in bam.named_modules():
        m.register_forward_hook(lambda mod, args, out, name=name: called.append(name))
    bam(torch.randn(1, 64, 8, 8))
    assert set(called) == {name for name, _ in bam.named_modules()}
    # The BatchNorm1d's hook saw it in eval mode, on the one sample, and it is back in training.
    assert bam.channel_att.gate_c[1].training


def test_batch_one_channel_gate_equals_eval_and_eval_output_is_unchanged():
    bam = randomize_(BAM(32), seed=2).train()
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        in_eval = bam.channel_att.eval()(x)
        bam.channel_att.train()
        in_training = bam.channel_att(x)
        assert_close(in_training, in_eval)
        assert_close(bam.channel_att.eval()(x), in_eval)  # a batch-1 step changed nothing


def test_single_1x1_map_in_training_names_the_cause():
    with pytest.raises(ValueError, match=r"one 1x1 map in training mode.*norm='frozen'"):
        BAM(64).train()(torch.randn(1, 64, 1, 1))
    # Frozen norms need no batch statistics; a batch of two 1x1 maps has them.
    assert BAM(64, norm="frozen").train()(torch.randn(1, 64, 1, 1)).shape == (1, 64, 1, 1)
    assert BAM(64).train()(torch.randn(2, 64, 1, 1)).shape == (2, 64, 1, 1)


def test_frozen_norms_keep_keys_and_equal_batch_norms_in_eval():
    from torch_bam.norm import FrozenBatchNorm

    batch = randomize_(BAM(64), seed=3)
    frozen = BAM(64, norm="frozen")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm) for m in frozen.modules()) == 4
    keys = {k for k in batch.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(frozen.state_dict()) == keys
    frozen.load_state_dict(batch.state_dict(), strict=True)  # num_batches_tracked dropped
    assert "norm='frozen'" in repr(frozen)
    assert sum(p.numel() for p in frozen.parameters()) < sum(p.numel() for p in batch.parameters())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    for n in (1, 2):
        x = torch.randn(n, 64, 8, 8)
        out = frozen.train()(x)  # the same in training: no batch statistics, nothing updated
        assert_close(out, batch.eval()(x))
        out.mean().backward()
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())
    assert all(p.grad is not None for p in frozen.parameters())
    # freeze_norms keeps the trained statistics.
    assert_close(copy.deepcopy(batch).freeze_norms().train()(x), batch.eval()(x))
    with pytest.raises(ValueError, match="unknown norm='group'.*'batch'.*'frozen'"):
        BAM(64, norm="group")
