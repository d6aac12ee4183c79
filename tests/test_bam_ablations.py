"""The paper's ablations (its Table 1): combine="max", channel-only and spatial-only BAM.

Each is checked against the maths written out here from the block's weights (eval mode), on
the plain path, the CPU room's dispatch (which declines them) and in add_bam, create_model,
fold_bam, TorchScript, FX and ONNX.
"""

import io

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import assert_close, randomize_
from torch_bam import BAM, add_bam, create_model, dispatch
from torch_bam.fold import fold_bam
from torch_bam.functional import bam_gate, set_backend

VARIANTS = [
    dict(combine="max"),
    dict(attention="channel"),
    dict(attention="spatial"),
    dict(attention="channel", combine="product"),  # combine does not apply to one gate
]


def _bn(t, sd, key):
    return F.batch_norm(
        t, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
        sd[f"{key}.bias"], False, 0.0, 1e-5,
    )  # fmt: skip


def reference(block: BAM, x: torch.Tensor) -> torch.Tensor:
    """The block in eval mode, from its state_dict: M_c, M_s and their combination."""
    sd = block.state_dict()
    c = s = None
    if block.attention != "spatial":
        p = "channel_att.gate_c"
        h = F.linear(x.mean((2, 3)), sd[f"{p}.0.weight"], sd[f"{p}.0.bias"])
        h = F.relu(_bn(h, sd, f"{p}.1"))
        c = F.linear(h, sd[f"{p}.3.weight"], sd[f"{p}.3.bias"])[:, :, None, None]
    if block.attention != "channel":
        p = "spatial_att.gate_s.gate_s_"
        h = F.conv2d(x, sd[f"{p}conv_reduce0.weight"], sd[f"{p}conv_reduce0.bias"])
        h = F.relu(_bn(h, sd, f"{p}bn_reduce0"))
        for i in range(block.num_dilated_convs):
            w, b = sd[f"{p}conv_di_{i}.weight"], sd[f"{p}conv_di_{i}.bias"]
            h = F.conv2d(h, w, b, padding=block.dilation, dilation=block.dilation)
            h = F.relu(_bn(h, sd, f"{p}bn_di_{i}"))
        s = F.conv2d(h, sd[f"{p}conv_final.weight"], sd[f"{p}conv_final.bias"])
    if c is None:
        logits = s
    elif s is None:
        logits = c
    elif block.combine == "max":
        logits = torch.maximum(c, s)
    elif block.combine == "product":
        logits = c * s
    else:
        logits = c + s
    return x * (1 + torch.sigmoid(logits))


def _x(c=32, n=2, hw=10):
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _auto_backend():
    yield
    set_backend("auto")


@pytest.mark.parametrize("kw", VARIANTS, ids=str)
@pytest.mark.parametrize("backend", ["auto", "aten", "reference"])
def test_matches_reference_on_every_path(kw, backend):
    set_backend(backend)
    block = randomize_(BAM(32, reduction_ratio=4, **kw)).eval()
    x = _x()
    assert dispatch.block_path(block, x) == "plain"  # the rooms decline the ablations
    with torch.no_grad():
        assert_close(block(x), reference(block, x))


def test_reference_of_the_full_bam_is_the_block():
    # The reference above is right for the paper's BAM too, whatever path that takes.
    block = randomize_(BAM(32, reduction_ratio=4)).eval()
    x = _x()
    with torch.no_grad():
        assert_close(block(x), reference(block, x), dtype=torch.float32)


@pytest.mark.parametrize("kw", VARIANTS[:3], ids=str)
def test_trains_and_every_parameter_gets_a_gradient(kw):
    block = randomize_(BAM(32, reduction_ratio=4, **kw)).train()
    x = _x().requires_grad_()
    block(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None, name


def test_one_gate_keys_are_the_full_bams_keys_of_that_gate():
    full = set(BAM(32, reduction_ratio=4).state_dict())
    channel = set(BAM(32, reduction_ratio=4, attention="channel").state_dict())
    spatial = set(BAM(32, reduction_ratio=4, attention="spatial").state_dict())
    assert channel == {k for k in full if k.startswith("channel_att.")}
    assert spatial == {k for k in full if k.startswith("spatial_att.")}
    assert channel | spatial == full
    # So a one-gate BAM loads its part of a full BAM's weights.
    one = BAM(32, reduction_ratio=4, attention="spatial")
    one.load_state_dict({k: v for k, v in BAM(32, 4).state_dict().items() if k in spatial})


def test_bad_values_name_the_choices():
    with pytest.raises(ValueError, match="'both'.*'channel'.*'spatial'"):
        BAM(32, attention="none")
    with pytest.raises(ValueError, match="'max'"):
        BAM(32, combine="min")


def test_functional_max_matches_its_maths_and_gradients():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 1, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    expected = x * (1 + torch.sigmoid(torch.maximum(c[:, :, None, None], s)))
    assert_close(bam_gate(x, c, s, "max"), expected)
    torch.autograd.gradcheck(lambda *t: bam_gate(*t, "max"), (x, c, s))
    with torch.no_grad():
        y = x.detach().clone()
        bam_gate(y, c.detach(), s.detach(), "max", inplace=True)
        assert_close(y, expected.detach())
    # The registered op itself computes sum and product only, and says where max is.
    with pytest.raises(ValueError, match="functional.bam_gate"):
        torch.ops.torch_bam.bam_gate(x.detach(), c.detach(), s.detach(), "max")


@pytest.mark.parametrize("kw", VARIANTS[:3], ids=str)
def test_fold_script_fx(kw):
    block = randomize_(BAM(32, reduction_ratio=4, **kw)).eval()
    x = _x()
    with torch.no_grad():
        expected = reference(block, x)
        scripted = torch.jit.script(block)
        assert_close(scripted(x), expected)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        assert_close(torch.jit.load(buf)(x), expected)
        assert_close(torch.fx.symbolic_trace(block)(x), expected)
        folded = fold_bam(randomize_(BAM(32, reduction_ratio=4, **kw)).eval())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS[:3], ids=str)
def test_onnx_matches_onnxruntime(kw, tmp_path):
    pytest.importorskip("onnx", reason="install the export extra: pip install torch-bam[export]")
    ort = pytest.importorskip("onnxruntime")
    block = randomize_(BAM(32, reduction_ratio=4, **kw)).eval()
    x = _x()
    path = tmp_path / "bam.onnx"
    torch.onnx.export(block, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)
    (y,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), reference(block, x), rtol=1e-4, atol=1e-5)


def test_add_bam_and_create_model_pass_the_switches_on():
    net = torch.nn.Sequential(  # stem conv, a stage conv, then the downsampling
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 16, 3, padding=1),
    )
    add_bam(net, torch.randn(2, 3, 16, 16), reduction_ratio=4, attention="spatial")
    blocks = [m for m in net.modules() if isinstance(m, BAM)]
    assert blocks and all(b.attention == "spatial" and b.channel_att is None for b in blocks)
    model = create_model("bam_small_cnn", combine="max", attention="both")
    blocks = [m for m in model.modules() if isinstance(m, BAM)]
    assert blocks and all(b.combine == "max" for b in blocks)
    model = create_model("bam_small_cnn", attention="channel").eval()
    assert all(b.spatial_att is None for b in model.modules() if isinstance(b, BAM))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(torch.jit.script(model)(x), model(x))


def test_floor_and_record_attention_of_one_gate_bams():
    from torch_bam.attention import record_attention
    from torch_bam.floor import BAMFloor

    with pytest.raises(ValueError, match="both gates"):
        BAMFloor(BAM(32, reduction_ratio=4, attention="channel"))
    for attention, present in (("channel", "channel_logits"), ("spatial", "spatial_logits")):
        block = randomize_(BAM(32, reduction_ratio=4, attention=attention)).eval()
        x = _x()
        with record_attention(block) as maps, torch.no_grad():
            y = block(x)
        m = maps[""]
        assert getattr(m, present) is not None
        assert_close(x * (1 + m.gate), y)
