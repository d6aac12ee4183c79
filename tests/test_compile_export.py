"""BAM under TorchScript, FX, torch.compile and ONNX: each runs and matches eager mode."""

import io

import pytest
import torch

from tests.helpers import randomize_
from torch_bam import BAM


@pytest.fixture(params=["sum", "product"])
def bam(request):
    return randomize_(BAM(64, combine=request.param)).eval()


@pytest.fixture
def x():
    return torch.randn(2, 64, 12, 12, generator=torch.Generator().manual_seed(0))


def test_jit_script(bam, x):
    scripted = torch.jit.script(bam)
    torch.testing.assert_close(scripted(x), bam(x))
    # Checks survive scripting.
    with pytest.raises(torch.jit.Error, match="built for 64 channels"):
        scripted(torch.randn(2, 32, 12, 12))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.jit.load(buf)(x), bam(x))


def test_jit_script_train_mode(x):
    bam = randomize_(BAM(64)).train()
    ref = randomize_(BAM(64)).train()
    scripted = torch.jit.script(bam)
    torch.testing.assert_close(scripted(x), ref(x))


def test_jit_trace(bam, x):
    traced = torch.jit.trace(bam, (x,))
    torch.testing.assert_close(traced(x), bam(x))
    other = torch.randn(3, 64, 12, 12)
    torch.testing.assert_close(traced(other), bam(other))


def test_fx_symbolic_trace(bam, x):
    gm = torch.fx.symbolic_trace(bam)
    torch.testing.assert_close(gm(x), bam(x))
    # The input check is a leaf call in the graph, so it still runs.
    assert any(n.op == "call_function" and "_check_input" in str(n.target) for n in gm.graph.nodes)
    with pytest.raises(ValueError, match="built for 64 channels"):
        gm(torch.randn(2, 32, 12, 12))


def test_torch_compile_fullgraph(bam, x):
    compiled = torch.compile(bam, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(x), bam(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph_train_backward(x):
    ref = randomize_(BAM(64)).train()
    bam = randomize_(BAM(64)).train()
    compiled = torch.compile(bam, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(compiled(xa), ref(xb))
    compiled(xa).sum().backward()
    ref(xb).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)


def test_torch_export(bam, x):
    ep = torch.export.export(bam, (x,))
    torch.testing.assert_close(ep.module()(x), bam(x))


def test_onnx_export_matches_onnxruntime(bam, x, tmp_path):
    pytest.importorskip("onnx", reason="install the export extra: pip install torch-bam[export]")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "bam.onnx"
    torch.onnx.export(bam, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), bam(x), rtol=1e-4, atol=1e-5)


def test_torch_compile_training_with_dynamic_height_and_width():
    """Multi-scale training: inductor with symbolic H and W (dynamic=True, as automatic dynamic
    shapes give after a second size). The CPU room's 1x1 reduce as a batched matmul made
    inductor fail ("cannot determine truth value of Relational"). A narrow gate (C // r = 8)
    takes that path in eager training."""
    torch.manual_seed(0)
    bam = randomize_(BAM(32, reduction_ratio=4)).train()
    ref = randomize_(BAM(32, reduction_ratio=4)).train()
    ref.load_state_dict(bam.state_dict())
    compiled = torch.compile(bam, dynamic=True, backend="inductor")
    for size in (8, 12):
        x = torch.randn(2, 32, size, size + 2)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = compiled(xa), ref(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
