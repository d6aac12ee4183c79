"""torch_bam.dispatch: which path a block takes, per device and mode (CPU here; the CUDA room
under the Triton interpreter is in tests/cuda/test_block.py)."""

import pytest
import torch

from torch_bam import BAM, dispatch
from torch_bam.cpu.block import MIN_HIDDEN
from torch_bam.functional import set_backend

WIDE = 16 * MIN_HIDDEN  # a gate width C // 16 the CPU room takes


@pytest.fixture
def backend():
    yield set_backend
    set_backend("auto")


def _x(c=WIDE, requires_grad=True):
    return torch.randn(2, c, 6, 6, requires_grad=requires_grad)


def test_cpu_training_takes_the_cpu_room():
    assert dispatch.block_path(BAM(WIDE).train(), _x()) == "cpu"


def test_cpu_inference_takes_the_cpu_rooms_forward():
    block = BAM(WIDE).eval()
    x = _x(requires_grad=False)
    with torch.no_grad():
        assert dispatch.block_path(block, x) == "cpu"
        assert dispatch._choose(block, x)[1][0] == "forward"  # no custom autograd


@pytest.mark.parametrize("channels", [WIDE, 16 * (MIN_HIDDEN - 1), 32])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_cpu_eval_is_bitwise_what_fx_records(channels, grad, layout):
    """In eval the CPU room computes the layers as the modules do: bitwise the plain path's
    output, so a traced network gives the eager output exactly (timm's FX test: ``==``)."""
    torch.manual_seed(0)
    block = BAM(channels).eval().to(memory_format=layout)
    for m in block.modules():  # running statistics away from 0 and 1
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, channels, 9, 7).to(memory_format=layout).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        assert dispatch.block_path(block, x) == "cpu"
        y = block(x)
        # The graph calls the modules and the gate op: the plain path, with the same kernels.
        traced = torch.fx.symbolic_trace(block)(x)
    assert torch.equal(y, traced)


def test_narrow_gates_train_through_the_cpu_rooms_forward():
    c = 16 * (MIN_HIDDEN - 1)
    block, x = BAM(c).train(), _x(c)
    assert dispatch.block_path(block, x) == "cpu"
    assert dispatch._choose(block, x)[1][0] == "forward"  # too narrow for the memory-saving one


@pytest.mark.parametrize(
    "change",
    ["forward hook", "pre-hook on a layer", "global hook", "replaced conv", "subclassed gate"],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_blocks_the_rooms_do_not_know_take_the_plain_path(change, mode):
    block = BAM(WIDE).train(mode == "train")
    handle = None
    if change == "forward hook":
        handle = block.channel_att.gate_c[0].register_forward_hook(lambda *a: None)
    elif change == "pre-hook on a layer":
        handle = block.spatial_att.gate_s[4].register_forward_pre_hook(lambda *a: None)
    elif change == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    elif change == "replaced conv":

        class MyConv(torch.nn.Conv2d):
            pass

        block.spatial_att.gate_s.gate_s_conv_final = MyConv(WIDE // 16, 1, 1)
    else:

        class MyGate(type(block.spatial_att)):
            pass

        block.spatial_att.__class__ = MyGate
    try:
        with torch.set_grad_enabled(mode == "train"):
            assert dispatch.block_path(block, _x(requires_grad=mode == "train")) == "plain"
    finally:
        if handle is not None:
            handle.remove()


@pytest.mark.parametrize("name", ["reference", "aten"])
def test_backends_reference_and_aten_take_the_plain_path(backend, name):
    backend(name)
    assert dispatch.block_path(BAM(WIDE).train(), _x()) == "plain"


def test_traces_proxies_and_meta_tensors_take_the_plain_path():
    block = BAM(WIDE).train()
    assert dispatch.block_path(block, object()) == "plain"  # an FX proxy is no Tensor
    assert dispatch.block_path(block, _x().to("meta")) == "plain"
    seen = []

    def spy(b, x, _real=dispatch._choose):  # the decision run_block acts on
        choice = _real(b, x)
        seen.append(choice[0])
        return choice

    dispatch._choose, real = spy, dispatch._choose
    try:
        torch.jit.trace(block.eval(), (_x(requires_grad=False),), check_trace=False)
    finally:
        dispatch._choose = real
    assert seen and set(seen) == {"plain"}


def test_the_rooms_give_the_plain_paths_results(backend):
    block, x = BAM(WIDE).train(), _x()
    state = {k: v.clone() for k, v in block.state_dict().items()}
    y = block(x)
    assert dispatch.block_path(block, x) == "cpu"
    backend("reference")
    block.load_state_dict(state)
    torch.testing.assert_close(y, block(x), rtol=1e-5, atol=1e-5)
