"""timm's feature APIs on every registered network: forward_intermediates,
prune_intermediate_layers, features_only (list and getter), grad checkpointing on FeatureNet,
and TorchScript of a features_only network. Checks as timm's tests/test_models.py makes them
(test_model_forward_intermediates, test_model_forward_intermediates_features), on small inputs.
"""

import math
import re
import warnings

import pytest
import torch

import torch_bam
from torch_bam import BAM
from torch_bam.errors import UsageError


def _input(model, b=1):
    size = min(model.pretrained_cfg["input_size"][1] // 2, 32)
    return torch.randn(b, 3, size, size)


def _check_maps(maps, info_dicts, x):
    assert len(maps) == len(info_dicts)
    for m, d in zip(maps, info_dicts, strict=True):
        assert m.shape[:2] == (x.shape[0], d["num_chs"])
        assert m.shape[2] <= math.ceil(x.shape[2] / d["reduction"]) + 1
        assert m.shape[3] <= math.ceil(x.shape[3] / d["reduction"]) + 1
        assert not torch.isnan(m).any()


# One network per class here (every network: tests/models/test_timm_contract.py).
@pytest.mark.parametrize(
    "name", ["bam_resnet18", "bam_preresnet110", "bam_wrn28_8", "bam_mobilenet_v1", "bam_small_cnn"]
)
def test_forward_intermediates(name):
    torch.manual_seed(0)
    model = torch_bam.create_model(name).eval()
    x = _input(model)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        _check_maps(maps, model.feature_info, x)
        feats = model.forward_features(x)
        assert torch.equal(final, feats)  # timm: allclose; the same modules run here
        # The FeatureNet's maps are these maps.
        net = torch_bam.create_model(name, features_only=True).eval()
        net.load_state_dict({k: v for k, v in model.state_dict().items() if k in net.state_dict()})
        for a, b in zip(net(x), maps, strict=True):
            assert torch.equal(a, b)
        # indices: the last n, a list (negative from the last), stop_early, intermediates_only.
        levels = len(model.feature_info)
        _, last2 = model.forward_intermediates(x, indices=2)
        assert [m.shape for m in last2] == [m.shape for m in maps[-2:]]
        only = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        assert torch.equal(only[0], maps[0]) and torch.equal(only[1], maps[levels - 2])
        early, (one,) = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(early, maps[1]) and torch.equal(one, maps[1])
    with pytest.raises(UsageError, match="level numbers"):
        model.forward_intermediates(x, indices=[levels])
    with pytest.raises(UsageError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", ["bam_resnet18", "bam_preresnet110", "bam_small_cnn"])
def test_prune_intermediate_layers_and_getter(name):
    torch.manual_seed(0)
    model = torch_bam.create_model(name).eval()
    x = _input(model, b=2)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
        pruned = torch_bam.create_model(name).eval()
        pruned.load_state_dict(model.state_dict())
        assert pruned.prune_intermediate_layers([0, 1]) == [0, 1]
        # The levels after the last kept one are gone, BAMs included; the head too.
        assert sum(p.numel() for p in pruned.parameters()) < sum(
            p.numel() for p in model.parameters()
        )
        assert pruned.num_classes == 0 and pruned(x).dim() == 4
        kept = pruned.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert torch.equal(kept[0], maps[0]) and torch.equal(kept[1], maps[1])

    # features_only with timm's feature_cls="getter": forward_intermediates, pruned.
    getter = torch_bam.create_model(name, features_only=True, feature_cls="getter")
    getter.eval().model.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k in getter.model.state_dict()}
    )
    levels = len(model.feature_info)
    assert getter.feature_info.out_indices == tuple(range(levels))
    with torch.no_grad():
        got = getter(x)
    _check_maps(got, getter.feature_info.get_dicts(), x)
    for a, b in zip(got, maps, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(UsageError, match="feature_cls"):
        torch_bam.create_model(name, features_only=True, feature_cls="dict")


def test_getter_through_timm():
    timm = pytest.importorskip("timm")
    net = timm.create_model(
        "bam_resnet18", features_only=True, feature_cls="getter", out_indices=(1, 3)
    ).eval()
    assert net.feature_info.channels() == [64, 256] and net.feature_info.reduction() == [4, 16]
    assert isinstance(net.model.layer4, torch.nn.Identity)  # pruned: after the last level taken
    assert isinstance(net.model.bam3, BAM)
    with torch.no_grad():
        maps = net(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 256, 4, 4)]


@pytest.mark.parametrize("feature_cls", ["list", "getter"])
def test_features_only_grad_checkpointing_gives_the_same_gradients(feature_cls):
    torch.manual_seed(0)
    net = torch_bam.create_model("bam_resnet18", features_only=True, feature_cls=feature_cls)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        net.set_grad_checkpointing(enable)
        net.zero_grad(set_to_none=True)
        state = {k: v.clone() for k, v in net.state_dict().items()}  # BN statistics
        sum(m.square().mean() for m in net(x)).backward()
        net.load_state_dict(state)
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


# TorchScript compiles a network per module type, about a second each: one per class.
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated
@pytest.mark.parametrize(
    "name",
    [
        "bam_resnet18",
        "bam_preresnet110",
        "bam_resnext29_8x64d",
        "bam_mobilenet_v1",
        "bam_small_cnn",  # nested and shared modules
    ],
)
def test_features_only_scripts(name):
    torch.manual_seed(0)
    net = torch_bam.create_model(name, features_only=True, out_indices=(1, 2)).eval()
    x = _input(net, b=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    with torch.no_grad():
        ours, theirs = net(x), scripted(x)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        # Scripted, BAM's gate is the reference maths (eager: the fused kernel): equal to
        # float32 rounding, scaled by the maps' magnitude.
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


def test_features_only_of_nested_levels_keeps_the_networks_keys():
    # bam_small_cnn's levels name nested modules (stages.0, bams.0) and one pool shared by two
    # levels. Its FeatureNet runs them as flat entries (timm's stages_0), but its state_dict
    # keeps the network's keys, each once, and loads the network's state_dict.
    torch.manual_seed(0)
    model = torch_bam.create_model("bam_small_cnn").eval()
    net = torch_bam.create_model("bam_small_cnn", features_only=True).eval()
    expected = [k for k in model.state_dict() if not k.startswith("fc.")]
    assert sorted(net.state_dict()) == sorted(expected)  # in the order they run, as timm's
    net.load_state_dict({k: model.state_dict()[k] for k in expected})  # strict
    for k, v in net.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    x = _input(model, b=2)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
        for a, b in zip(net(x), maps, strict=True):
            assert torch.equal(a, b)
    # Every parameter is seen once, and a pruned copy saves the same keys as it loads.
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("fc.")
    )
    with pytest.raises(RuntimeError, match=f'Missing key.*"{re.escape(expected[0])}"'):
        net.load_state_dict({k: v for k, v in model.state_dict().items() if k != expected[0]})
