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


def test_cpu_inference_takes_the_plain_path():
    block = BAM(WIDE).eval()
    with torch.no_grad():
        assert dispatch.block_path(block, _x(requires_grad=False)) == "plain"
        assert dispatch.run_block(block, _x(requires_grad=False)) is None


def test_narrow_gates_take_the_plain_path():
    assert dispatch.block_path(BAM(16 * (MIN_HIDDEN - 1)).train(), _x(16 * (MIN_HIDDEN - 1))) == (
        "plain"
    )


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
