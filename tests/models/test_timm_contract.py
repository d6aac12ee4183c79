"""Every registered network against the checks timm's own model tests make: forward and
backward, the default configuration, forward_features / forward_head, forward_intermediates,
reset_classifier,
features_only with feature_info (ours and through timm), FX forward and backward, TorchScript,
FX then TorchScript, and the head's keyword arguments.

The checks for one network run in one test, on one model, so each network is built as few times
as possible; inputs are small (32 px for the CIFAR-sized networks, 64 px for ImageNet ones).
"""

import pytest
import torch
from torch import nn

import torch_bam
from torch_bam import BAM
from torch_bam.models._cfg import get_pretrained_cfg
from torch_bam.models._timm import timm_name

timm = pytest.importorskip("timm")
from timm.models import (  # noqa: E402
    create_feature_extractor,
    get_notrace_functions,
    get_notrace_modules,
)
from timm.optim import param_groups_layer_decay  # noqa: E402
from torchvision.models.feature_extraction import (  # noqa: E402
    create_feature_extractor as tv_feature_extractor,
)
from torchvision.models.feature_extraction import get_graph_node_names  # noqa: E402

NAMES = torch_bam.list_models()


def contract_input(model, size=None):
    """Batch 2, half the configured size for CIFAR-sized networks (16 px), 32 px for ImageNet
    ones: the last map is 4x4 or 1x1, enough for every check and quick on a CPU."""
    if size is None:
        size = min(model.pretrained_cfg["input_size"][1] // 2, 32)
    return torch.randn(2, 3, size, size)


def assert_all_grads(model, what):
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{what}: no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def timm_tracer_kwargs():
    return dict(
        leaf_modules=get_notrace_modules(),
        autowrap_functions=get_notrace_functions(),
        param_shapes_constant=True,
    )


def eval_nodes(model):
    return get_graph_node_names(model, tracer_kwargs=timm_tracer_kwargs())[1]


def timm_fx_model(model):
    """``model`` as timm's ``_create_fx_model`` traces it for test_model_forward_fx."""
    return tv_feature_extractor(
        model,
        train_return_nodes=[get_graph_node_names(model, tracer_kwargs=timm_tracer_kwargs())[0][-1]],
        eval_return_nodes=[eval_nodes(model)[-1]],
        tracer_kwargs=timm_tracer_kwargs(),
    )


def check_cfg(name, model):
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg and cfg["architecture"] == name
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] == 3
    assert all(s > 0 for s in cfg["std"]) and 0 < cfg["crop_pct"] <= 1
    # As timm's: the classes of the configuration's weights, not of this model's classifier.
    assert cfg["num_classes"] == get_pretrained_cfg(name).num_classes > 0
    # The named modules are the real ones (timm adapts them for in_chans and fine-tuning).
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    assert cfg["first_conv"] + ".weight" == next(iter(model.state_dict()))
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == tuple(cfg["input_size"])
    assert data["mean"] == tuple(cfg["mean"]) and data["std"] == tuple(cfg["std"])
    assert data["crop_pct"] == cfg["crop_pct"]
    # pool_size: the last map's size at the configured input (timm runs it; arithmetic here).
    reduction = model.feature_info[-1]["reduction"]
    assert tuple(cfg["pool_size"]) == tuple(s // reduction for s in cfg["input_size"][1:])
    timm_cfg = timm.models.get_pretrained_cfg(timm_name(name))
    assert tuple(timm_cfg.input_size) == tuple(cfg["input_size"])
    assert timm_cfg.classifier == cfg["classifier"]


def check_features(model, x, ref_maps=None):
    """Each returned map has the channels and reduction feature_info gives for it."""
    maps = model(x)
    info = model.feature_info
    assert len(maps) == len(info.channels()) == len(info.reduction()) == len(info.out_indices)
    for m, c, r in zip(maps, info.channels(), info.reduction(), strict=True):
        assert m.shape == (x.shape[0], c, x.shape[2] // r, x.shape[3] // r)
    if ref_maps is not None:
        for m, ref in zip(maps, ref_maps, strict=True):
            torch.testing.assert_close(m, ref)
    return maps


@pytest.mark.parametrize("name", NAMES)
def test_timm_contract(name):
    torch.manual_seed(0)
    model = torch_bam.create_model(name, num_classes=7)
    assert any(isinstance(m, BAM) for m in model.modules()) == name.startswith("bam_")
    check_cfg(name, model)
    x = contract_input(model)

    # Forward and backward in training: every parameter gets a gradient.
    model.train()
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.mean().backward()
    assert_all_grads(model, "eager")

    # timm's FX feature extractor, in training: forward and backward through the graph.
    model.zero_grad(set_to_none=True)
    fx = create_feature_extractor(model, return_nodes=["fc"])
    fx(x)["fc"].mean().backward()
    assert_all_grads(model, "FX")

    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        last = model.feature_info[-1]
        assert feats.shape == (
            2,
            model.num_features,
            x.shape[2] // last["reduction"],
            x.shape[3] // last["reduction"],
        )
        assert last["num_chs"] == model.num_features
        # forward_intermediates: every level's map, and forward_features' map (timm's test).
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, feats) and len(inter) == len(model.feature_info)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(feats), logits)

        # FX forward, bitwise (timm's test_model_forward_fx: torch.all(fx_outputs == outputs)),
        # traced plainly and as timm's test traces it (its leaf modules, the last node).
        assert torch.equal(torch.fx.symbolic_trace(model)(x), logits)
        assert torch.equal(timm_fx_model(model)(x)[eval_nodes(model)[-1]], logits)

    # reset_classifier: none (pooled features), none and no pooling (the map), a new one.
    model.eval()
    with torch.no_grad():
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), feats)
        model.reset_classifier(5, "avg")
        assert model.get_classifier().out_features == 5 and model.num_classes == 5
        assert model(x).shape == (2, 5)

    # features_only (every level): the maps carry the BAMs, and the network's weights load.
    levels = len(model.feature_info)
    net = torch_bam.create_model(name, features_only=True).eval()
    assert levels >= 3 and len(net.feature_info) == levels
    assert sum(isinstance(m, BAM) for m in net.modules()) == sum(
        isinstance(m, BAM) for m in model.modules()
    )
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    net.load_state_dict(state)
    with torch.no_grad():
        maps = check_features(net, x)
        torch.testing.assert_close(maps[-1], feats)
        assert all(torch.equal(a, b) for a, b in zip(maps, inter, strict=True))


# One network per class: the head's keyword arguments, checkpointing, layer-wise decay.
PER_CLASS = [
    "bam_resnet18",
    "bam_preresnet110",
    "bam_resnext29_8x64d",
    "bam_mobilenet_v1_0_7",
    "bam_small_cnn",
]


@pytest.mark.parametrize("name", PER_CLASS)
def test_head_kwargs_checkpointing_and_layer_decay(name):
    torch.manual_seed(0)
    model = timm.create_model(timm_name(name), num_classes=3, drop_rate=0.5, global_pool="max")
    assert model.drop_rate == 0.5 and model.global_pool.pool_type == "max"
    # A last map larger than 1x1, where max and mean pooling differ.
    x = contract_input(model, size=64 if model.feature_info[-1]["reduction"] == 32 else None)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(
            model.forward_head(feats, pre_logits=True), feats.amax(dim=(2, 3))
        )
        torch.testing.assert_close(model(x), model(x))  # no dropout in eval
    model.train()
    with torch.no_grad():
        pre = model.forward_head(feats, pre_logits=True)
    dropped = (pre == 0).float().mean()
    assert 0.3 < dropped < 0.7, dropped  # half the pooled features dropped in training

    # Gradient checkpointing: the same gradients as without (drop_rate off: no randomness).
    model.drop_rate = 0.0
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        model(x).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)

    # Layer-wise decay covers every parameter, and BAM's with its stage's last block.
    groups = param_groups_layer_decay(model, weight_decay=0.0, layer_decay=0.5)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    bam_name, bam = next((n, m) for n, m in model.named_modules() if isinstance(m, BAM))
    assert len({scale[id(p)] for p in bam.parameters()}) == 1
    assert scale[id(next(bam.parameters()))] < scale[id(model.get_classifier().weight)]


# TorchScript compiles a network per module type and instance, about a second per network on a
# CPU. One network per class, with and without BAM (the smallest of each), gets the full check
# below with timm's features_only; every other network is scripted by the test after it.
SCRIPTED = [
    f"{prefix}{base}"
    for base in (
        "resnet18",
        "cifar_resnet50",
        "wrn28_8",
        "resnext29_8x64d",
        "mobilenet_v1",
        "small_cnn",
    )
    for prefix in ("", "bam_")
]


def check_scripted(model, x, relative_atol=0.0):
    """``model`` scripted, and FX-traced then scripted, gives the eager logits (scripted, BAM
    takes the plain path; eager, the CPU room's: equal to rounding), to an absolute tolerance
    of 1e-4 plus ``relative_atol`` times the largest logit."""
    logits = model(x)
    atol = 1e-4 + relative_atol * float(logits.abs().max())
    torch.testing.assert_close(torch.jit.script(model)(x), logits, rtol=1e-4, atol=atol)
    fx_script = torch.jit.script(torch.fx.symbolic_trace(model))
    torch.testing.assert_close(fx_script(x), logits, rtol=1e-4, atol=atol)


# torch.jit.script of any torch.fx.GraphModule warns about torch's own annotation in
# GraphModule.__init__ (also for the networks without BAM): torch's, not ours.
@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
@pytest.mark.parametrize("name", SCRIPTED)
def test_torchscript_fx_then_torchscript_and_timm_features(name):
    torch.manual_seed(0)
    model = torch_bam.create_model(name).eval()
    x = contract_input(model)
    with torch.no_grad():
        check_scripted(model, x)

        # features_only through timm, a subset of the levels: the same maps as ours.
        levels = len(model.feature_info)
        picked = (1, levels - 1)
        net = timm.create_model(timm_name(name), features_only=True, out_indices=picked).eval()
        assert net.feature_info.out_indices == picked
        ours = torch_bam.create_model(name, features_only=True).eval()
        ours.load_state_dict(net.state_dict(), strict=False)  # ours has every level's modules
        ref = check_features(ours, x)
        check_features(net, x, [ref[i] for i in picked])


@pytest.mark.filterwarnings("ignore:The TorchScript type system doesn't support instance-level")
@pytest.mark.parametrize("name", [n for n in NAMES if n not in SCRIPTED])
def test_torchscript_and_fx_then_torchscript_of_the_other_networks(name):
    # The networks the test above leaves out, scripted too (about 1 s each).
    torch.manual_seed(0)
    model = torch_bam.create_model(name).eval()
    x = contract_input(model)
    with torch.no_grad():
        # Untrained deep networks in eval give logits up to ~1e5: compare relative to that.
        check_scripted(model, x, relative_atol=1e-5)
