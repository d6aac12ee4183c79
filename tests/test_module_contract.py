"""BAM computes through its submodules on every path (torch_bam.dispatch's table): forward hooks
fire on every module, a replaced conv or linear changes the output, pruning trains, and
prepare_qat fake-quantises and observes every conv and linear.

Each test first checks which path the unchanged block takes, so that each case covers the path
it names: the CPU room's memory-saving training and its forward (inference, narrow gates), and
the plain modules (backend "reference"). tests/cuda/test_module_contract.py runs these tests on
the CUDA room (backend "triton", under the Triton interpreter).
"""

import copy
from collections import Counter
from typing import NamedTuple

import pytest
import torch
import torch.ao.nn.qat as nnqat
import torch.ao.quantization as tq
from torch import nn
from torch.nn.utils import prune

from tests.helpers import randomize_
from torch_bam import BAM, dispatch
from torch_bam.cpu.block import MIN_HIDDEN
from torch_bam.functional import set_backend

WIDE = 16 * MIN_HIDDEN  # the CPU room's memory-saving training takes this gate width
NARROW = 16 * (MIN_HIDDEN - 1)  # ... and not this one: the CPU room's forward trains it


class Path(NamedTuple):
    backend: str
    channels: int
    train: tuple  # (path, CPU room mode) the plain block takes in training (and eval-grad)
    eval: tuple  # ... and in inference (eval mode, no grad)


PATHS = {
    "cpu-room": Path("auto", WIDE, ("cpu", "train"), ("cpu", "forward")),
    "cpu-room-narrow": Path("auto", NARROW, ("cpu", "forward"), ("cpu", "forward")),
    "reference": Path("reference", WIDE, ("plain", None), ("plain", None)),
}
MODES = ["train", "eval", "eval-grad"]  # eval-grad: eval mode with autograd (saliency, attacks)
WEIGHTED = (nn.Conv2d, nn.Linear)


@pytest.fixture(params=list(PATHS))
def path(request):
    set_backend(PATHS[request.param].backend)
    yield PATHS[request.param]
    set_backend("auto")


def _block(path, mode):
    return randomize_(BAM(path.channels)).train(mode == "train")


def _x(path, mode, seed=0):
    x = torch.randn(4, path.channels, 5, 5, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(mode != "eval")


def _forward(block, x, mode):
    with torch.set_grad_enabled(mode != "eval"):
        return block(x)


def _route(block, x, mode):
    """(path, CPU room mode or None) that ``block(x)`` takes."""
    with torch.set_grad_enabled(mode != "eval"):
        path, plan = dispatch._choose(block, x)
    return path, plan[0] if path == "cpu" else None


def _check_route(path, block, x, mode):
    expected = path.eval if mode == "eval" else path.train
    assert _route(block, x, mode) == expected


def _weighted_layers(block):
    return [n for n, m in block.named_modules() if type(m) in WEIGHTED]


# ---------------------------------------------------------------------------------------------
# Hooks


@pytest.mark.parametrize("mode", MODES)
def test_forward_hooks_on_every_module_fire_once(path, mode):
    block, x = _block(path, mode), _x(path, mode)
    _check_route(path, block, x, mode)
    expected = _forward(copy.deepcopy(block), x, mode)
    calls = Counter()
    handles = [
        m.register_forward_hook(lambda *a, n=name: calls.update([n]))
        for name, m in block.named_modules()
    ]
    try:
        y = _forward(block, x, mode)
    finally:
        for h in handles:
            h.remove()
    assert calls == Counter(name for name, _ in block.named_modules())
    assert len(calls) == 19  # BAM, 2 gates, 2 Sequentials, 4 + 10 layers
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_a_hook_on_any_one_module_fires_once(path, mode):
    block, x = _block(path, mode), _x(path, mode)
    _check_route(path, block, x, mode)
    for name, m in block.named_modules():
        for register in (m.register_forward_pre_hook, m.register_forward_hook):
            calls = []
            handle = register(lambda *a, calls=calls: calls.append(1))
            try:
                _forward(block, x, mode)
            finally:
                handle.remove()
            assert len(calls) == 1, f"{register.__name__} on {name or 'BAM'}"


@pytest.mark.parametrize("mode", MODES)
def test_global_module_hooks_see_every_module_once(path, mode):
    block, x = _block(path, mode), _x(path, mode)
    _check_route(path, block, x, mode)
    expected = _forward(copy.deepcopy(block), x, mode)
    names = {id(m): n for n, m in block.named_modules()}
    for register in (
        nn.modules.module.register_module_forward_pre_hook,
        nn.modules.module.register_module_forward_hook,
    ):
        calls = Counter()
        handle = register(lambda m, *a, calls=calls: calls.update([names.get(id(m), "?")]))
        try:
            y = _forward(block, x, mode)
        finally:
            handle.remove()
        assert calls == Counter(names.values()), register.__name__
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Replaced layers


class _SquaredConv(nn.Conv2d):
    def forward(self, x):  # not undone by the BatchNorm after it, as a scale would be
        return super().forward(x).square()


class _SquaredLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x).square()


@pytest.mark.parametrize("mode", MODES)
def test_a_subclassed_conv_or_linear_changes_the_output(path, mode):
    block, x = _block(path, mode), _x(path, mode)
    _check_route(path, block, x, mode)
    before = _forward(copy.deepcopy(block), x, mode)
    names = _weighted_layers(block)
    assert len(names) == 6  # 2 linears, reduce, 2 dilated, final
    for name in names:
        changed = copy.deepcopy(block)
        layer = changed.get_submodule(name)
        layer.__class__ = _SquaredConv if type(layer) is nn.Conv2d else _SquaredLinear
        y = _forward(changed, x, mode)
        assert (y - before).abs().max() > 1e-3, name


@pytest.mark.parametrize("mode", MODES)
def test_a_conv_or_linear_with_other_weights_changes_the_output(path, mode):
    """A plain layer with other weights in its place: a room may take the block, and computes
    with the new layer's weights, as the plain modules do."""
    block, x = _block(path, mode), _x(path, mode)
    _check_route(path, block, x, mode)
    before = _forward(copy.deepcopy(block), x, mode)
    for name in _weighted_layers(block):
        changed = copy.deepcopy(block)
        old = changed.get_submodule(name)
        new = randomize_(copy.deepcopy(old), seed=1)
        parent, _, child = name.rpartition(".")
        setattr(changed.get_submodule(parent), child, new)
        assert changed.get_submodule(name) is new
        _check_route(path, changed, x, mode)  # the same path as before
        plain = copy.deepcopy(changed)
        y = _forward(changed, x, mode)
        assert (y - before).abs().max() > 1e-3, name
        set_backend("reference")
        try:
            expected = _forward(plain, x, mode)
        finally:
            set_backend(path.backend)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_a_conv_or_linear_wrapped_in_another_module_changes_the_output(path, mode):
    """A layer replaced by a module with no ``weight`` of its own (a wrapper, an adapter): the
    block runs it (the plain path) and its result changes with the wrapped layer's weights."""
    block, x = _block(path, mode), _x(path, mode)
    before = _forward(copy.deepcopy(block), x, mode)
    for name in _weighted_layers(block):
        changed = copy.deepcopy(block)
        parent, _, child = name.rpartition(".")
        inner = randomize_(copy.deepcopy(changed.get_submodule(name)), seed=1)
        setattr(changed.get_submodule(parent), child, nn.Sequential(inner))
        assert _route(changed, x, mode)[0] == "plain", name
        y = _forward(changed, x, mode)
        assert (y - before).abs().max() > 1e-3, name


# ---------------------------------------------------------------------------------------------
# Pruning


LAYERS = [  # the spatial gate's two 1x1 convs, which the CPU room computes as matmuls, and a linear
    "spatial_att.gate_s.gate_s_conv_reduce0",
    "spatial_att.gate_s.gate_s_conv_final",
    "channel_att.gate_c.0",
]


@pytest.mark.parametrize("name", LAYERS)
def test_a_pruned_layer_trains_for_several_steps(path, name):
    block, x = _block(path, "train"), _x(path, "train")
    _check_route(path, block, x, "train")
    layer = block.get_submodule(name)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    mask = layer.weight_mask
    assert 0 < int(mask.sum()) < mask.numel()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        loss = block(x).square().mean()
        loss.backward()
        assert torch.isfinite(loss), step
        assert (layer.weight[mask == 0] == 0).all(), step  # the weight the forward used
        grad = layer.weight_orig.grad
        assert grad is not None, step  # the forward computed from the masked weight_orig
        assert (grad[mask == 0] == 0).all() and (grad[mask == 1] != 0).any(), step
        opt.step()
    block.eval()
    with torch.no_grad():
        pruned = block(x)
        mask.fill_(1.0)  # undo the pruning: the output must change
        unpruned = block(x)
    assert (pruned - unpruned).abs().max() > 1e-4


@pytest.mark.parametrize("name", LAYERS)
def test_a_parametrized_layer_trains(path, name):
    """torch.nn.utils.parametrize (here weight_norm): the weight is computed from the original
    tensors at each call, which then get the gradients."""
    block, x = _block(path, "train"), _x(path, "train")
    _check_route(path, block, x, "train")
    layer = block.get_submodule(name)
    torch.nn.utils.parametrizations.weight_norm(layer)
    block(x).square().mean().backward()
    weight = layer.parametrizations.weight
    magnitude, direction = weight.original0, weight.original1
    # (the magnitude's gradient is zero in exact maths where a training BatchNorm follows)
    assert magnitude.grad is not None, name
    assert direction.grad is not None and (direction.grad != 0).any(), name


# ---------------------------------------------------------------------------------------------
# Quantisation-aware training


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning")
def test_prepare_qat_fake_quantises_and_observes_every_conv_and_linear(path):
    block, x = _block(path, "train"), _x(path, "train")
    _check_route(path, block, x, "train")
    names = _weighted_layers(block)
    block.qconfig = tq.get_default_qat_qconfig("x86")
    qat = tq.prepare_qat(block)
    for name in names:
        layer = qat.get_submodule(name)
        assert type(layer) in (nnqat.Conv2d, nnqat.Linear), name
        assert isinstance(layer.weight_fake_quant, tq.FakeQuantizeBase), name
        assert isinstance(layer.activation_post_process, tq.FakeQuantizeBase), name
        assert torch.isinf(layer.activation_post_process.activation_post_process.min_val), name
    qat(x).square().mean().backward()
    for name in names:
        layer = qat.get_submodule(name)
        weights = layer.weight_fake_quant.activation_post_process
        # The first observation is the weight's own per-channel range.
        w = layer.weight.detach().flatten(1)
        torch.testing.assert_close(weights.min_val, w.amin(1), msg=name)
        torch.testing.assert_close(weights.max_val, w.amax(1), msg=name)
        outputs = layer.activation_post_process
        assert torch.isfinite(outputs.activation_post_process.min_val), name
        assert outputs.activation_post_process.min_val < outputs.activation_post_process.max_val
        assert not torch.equal(outputs.scale, torch.ones_like(outputs.scale)), name
        assert layer.weight.grad is not None and (layer.weight.grad != 0).any(), name
