"""add_bam: finding a CNN's bottlenecks and inserting BAM there."""

import pytest
import torch
from torch import nn

from tests.helpers import bam_param_count
from torch_bam import BAM, add_bam, create_model

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def plain_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


# name: (builder, expected [(path, channels, size at 64x64)], reduction_ratio)
CASES = {
    "tv_resnet18": (
        lambda: torchvision.models.resnet18(),
        [("layer1", 64, 16), ("layer2", 128, 8), ("layer3", 256, 4)],
        16,
    ),
    "tv_resnet50": (
        lambda: torchvision.models.resnet50(),
        [("layer1", 256, 16), ("layer2", 512, 8), ("layer3", 1024, 4)],
        16,
    ),
    "tv_wide_resnet50_2": (
        lambda: torchvision.models.wide_resnet50_2(),
        [("layer1", 256, 16), ("layer2", 512, 8), ("layer3", 1024, 4)],
        16,
    ),
    "tv_resnext50_32x4d": (
        lambda: torchvision.models.resnext50_32x4d(),
        [("layer1", 256, 16), ("layer2", 512, 8), ("layer3", 1024, 4)],
        16,
    ),
    # Blocks downsample inside themselves: BAM after the last block before a stride-2 block.
    "tv_mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(),
        [
            ("features.1", 16, 32),
            ("features.3", 24, 16),
            ("features.6", 32, 8),
            ("features.13", 96, 4),
        ],
        8,
    ),
    "tv_efficientnet_b0": (
        lambda: torchvision.models.efficientnet_b0(),
        [
            ("features.1", 16, 32),
            ("features.2", 24, 16),
            ("features.3", 40, 8),
            ("features.5", 112, 4),
        ],
        8,
    ),
    # Separate downsample layers: BAM after each stage before one.
    "tv_convnext_tiny": (
        lambda: torchvision.models.convnext_tiny(),
        [("features.1", 96, 16), ("features.3", 192, 8), ("features.5", 384, 4)],
        16,
    ),
    # Pools: BAM after the ReLU before each max-pool but the last (no conv follows it). No
    # block anywhere, so the first conv is the stem: none at 64x64 after VGG-11's single conv.
    "tv_vgg11_bn": (
        lambda: torchvision.models.vgg11_bn(),
        [("features.6", 128, 32), ("features.13", 256, 16), ("features.20", 512, 8)],
        16,
    ),
    # Stem (3x3/2 conv) straight into a stride-2 block: nothing runs at 32x32 but the stem's
    # own conv, so no BAM there (at 224: none at 112x112), whether or not the stem is nested.
    "tv_mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(),
        [("features.1", 16, 16), ("features.3", 24, 8), ("features.8", 48, 4)],
        8,
    ),
    "timm_mobilenetv3_small_100": (
        lambda: timm.create_model("mobilenetv3_small_100", pretrained=False),
        [("blocks.0", 16, 16), ("blocks.1", 24, 8), ("blocks.3", 48, 4)],
        8,
    ),
    # A stem in a Sequential (conv1) then a max-pool, as in a ResNet: no BAM in the stem.
    "tv_shufflenet_v2": (
        lambda: torchvision.models.shufflenet_v2_x0_5(),
        [("stage2", 48, 8), ("stage3", 96, 4)],
        16,
    ),
    # A deep stem (3x3/2 conv, then two 3x3/1 convs at 32x32, a plain Sequential) runs
    # before the first block: stem, so no BAM in it, as in a ResNet's 7x7 stem.
    "timm_resnet18d": (
        lambda: timm.create_model("resnet18d", pretrained=False),
        [("layer1", 64, 16), ("layer2", 128, 8), ("layer3", 256, 4)],
        16,
    ),
    "timm_resnet50": (
        lambda: timm.create_model("resnet50", pretrained=False),
        [("layer1", 256, 16), ("layer2", 512, 8), ("layer3", 1024, 4)],
        16,
    ),
    "timm_efficientnet_b0": (
        lambda: timm.create_model("efficientnet_b0", pretrained=False),
        [("blocks.0", 16, 32), ("blocks.1", 24, 16), ("blocks.2", 40, 8), ("blocks.4", 112, 4)],
        8,
    ),
    # No block: the first conv is the stem; the second conv's stage gets the BAM.
    "plain_sequential": (plain_cnn, [("5", 64, 32)], 16),
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(CASES))
def test_add_bam_architectures(name):
    build, expected, r = CASES[name]
    torch.manual_seed(0)
    model = build()
    before = n_params(model)
    keys_before = set(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    add_bam(model, x, reduction_ratio=r)
    report = model.bam_report
    assert [(p.path, p.channels, p.size) for p in report] == [
        (p, c, (s, s)) for p, c, s in expected
    ]
    bams = [m for m in model.modules() if isinstance(m, BAM)]
    assert [b.channels for b in bams] == [c for _, c, _ in expected]
    # The cost is exactly the inserted blocks, each as the closed form says.
    assert n_params(model) - before == sum(bam_param_count(c, r) for _, c, _ in expected)
    # The original keys are all still there.
    assert keys_before <= set(model.state_dict())
    # Each BAM sees the map it was placed on, and the model trains.
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:]))) for b in bams]
    model.train()
    model(x).sum().backward()
    assert seen == [(c, s, s) for _, c, s in expected]
    for b in bams:
        assert all(p.grad is not None for p in b.parameters())
    for h in hooks:
        h.remove()


def test_keys_unchanged_and_pretrained_weights_load():
    src = torchvision.models.resnet18()
    dst = add_bam(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64))
    result = dst.load_state_dict(src.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(".bam." in k for k in result.missing_keys)


def test_wrapper_keeps_keys_for_a_custom_forward():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(self.conv1(x).relu(), 2)  # not a module
            x = self.conv2(x)
            return self.head(x.mean((2, 3)))

    net = Net()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    # The functional pool is invisible to hooks: place BAM by name.
    add_bam(net, torch.randn(2, 3, 32, 32), at=["conv1"])
    assert [(p.path, p.channels, p.size) for p in net.bam_report] == [("conv1", 32, (32, 32))]
    assert set(sd) <= set(net.state_dict())
    net.load_state_dict(sd, strict=False)
    torch.testing.assert_close(net.state_dict()["conv1.weight"], sd["conv1.weight"])
    assert type(net.conv1).__name__ == "BAMAfter"
    x = torch.randn(2, 3, 32, 32)
    net(x).sum().backward()
    net.eval()
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_identity_init_gives_f_prime_close_to_f():
    torch.manual_seed(0)
    for combine in ("sum", "product"):
        base = torchvision.models.resnet18().eval()
        model = add_bam(
            torchvision.models.resnet18().eval(),
            torch.randn(2, 3, 64, 64),
            identity_init=True,
            combine=combine,
        )
        model.load_state_dict(base.state_dict(), strict=False)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            # Each block: F' = F * (1 + init_attention), whatever F.
            for b in (m for m in model.modules() if isinstance(m, BAM)):
                f = torch.randn(2, b.channels, 8, 8)
                torch.testing.assert_close(b(f), f * (1 + 1e-3), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(model(x), base(x), rtol=1e-2, atol=1e-3)
    # Without identity_init the same weights give clearly different outputs.
    plain = add_bam(torchvision.models.resnet18().eval(), torch.randn(2, 3, 64, 64))
    plain.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(plain(x), base(x), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs",
    [{"combine": "max"}, {"attention": "channel"}, {"attention": "spatial"}],
    ids=["max", "channel-only", "spatial-only"],
)
def test_identity_init_for_the_papers_ablations(kwargs):
    # The ablation switches (combine="max", one-gate BAMs) start as F * (1 + init_attention)
    # too: one gate alone carries the whole logit, and max needs both gates at it.
    model = add_bam(
        torchvision.models.resnet18().eval(), torch.randn(2, 3, 64, 64),
        identity_init=True, init_attention=0.01, **kwargs,
    )
    blocks = [m for m in model.modules() if isinstance(m, BAM)]
    assert len(blocks) == 3
    with torch.no_grad():
        for b in blocks:
            f = torch.randn(2, b.channels, 8, 8)
            torch.testing.assert_close(b(f), f * 1.01, rtol=1e-5, atol=1e-6)


def test_scriptable_fx_traceable_exportable():
    model = add_bam(torchvision.models.resnet18().eval(), torch.randn(2, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), want)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), want)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), want)


def test_sequential_parent_insertion_scripts_and_exports():
    model = add_bam(torchvision.models.vgg11_bn().eval(), torch.randn(2, 3, 64, 64))
    assert model.bam_report[0].bam_path == "features.6_bam"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), want)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), want)


def test_twice_is_an_error():
    model = add_bam(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="already has 3 BAM"):
        add_bam(model, torch.randn(2, 3, 64, 64))


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"no module \['layer9'\].*Valid names: conv1, bn1"):
        add_bam(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64), at=["layer9"])


def test_no_downsampling():
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 1))
    with pytest.raises(ValueError, match="found no bottleneck.*at="):
        add_bam(net, torch.randn(2, 3, 16, 16))


def test_non_image_model():
    with pytest.raises(ValueError, match="has no nn.Conv2d"):
        add_bam(nn.Sequential(nn.Linear(10, 10)))
    with pytest.raises(ValueError, match="failed on an example image batch"):
        add_bam(nn.Sequential(nn.Linear(10, 10)), torch.randn(2, 3, 16, 16))


def test_channels_too_small_for_reduction_ratio():
    with pytest.raises(ValueError, match=r"\('features.1', 16\).*reduction_ratio<=16"):
        add_bam(torchvision.models.mobilenet_v2(), torch.randn(2, 3, 64, 64), reduction_ratio=32)


def _stem_then_stride_2(nested: bool) -> nn.Module:
    stem = [nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU()]
    body = [
        nn.Conv2d(16, 32, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, 1, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ]
    return nn.Sequential(nn.Sequential(*stem), *body) if nested else nn.Sequential(*stem, *body)


def test_stem_rule_does_not_depend_on_nesting():
    x = torch.randn(2, 3, 32, 32)
    placed = []
    for nested in (False, True):
        model = add_bam(_stem_then_stride_2(nested), x)
        placed.append([(p.channels, p.size) for p in model.bam_report])
    # Only the stage at 8x8 (its stride-1 conv), before the max-pool; nothing after the stem.
    assert placed == [[(32, (8, 8))], [(32, (8, 8))]]


def test_add_bam_on_mobilenet_v1_matches_the_paper_network():
    x = torch.randn(2, 3, 64, 64)
    model = add_bam(create_model("mobilenet_v1"), x)
    paper = create_model("bam_mobilenet_v1")
    want = [m.channels for m in paper.modules() if isinstance(m, BAM)]
    assert [p.channels for p in model.bam_report] == want == [64, 128, 256, 512]
    assert [p.size for p in model.bam_report] == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_add_bam_again_at_a_module_that_has_one_is_an_error():
    x = torch.randn(2, 3, 32, 32)
    model = add_bam(torchvision.models.resnet18(), x)
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match=r"layer1 already has a BAM after it \(layer1\.bam\)"):
        add_bam(model, x, at=["layer1"])
    assert set(model.state_dict()) == keys
    # The same for a module wrapped in BAMAfter, and for a BAM beside it in a Sequential.
    add_bam(model, x, at=["conv1"])
    with pytest.raises(ValueError, match=r"conv1 already has a BAM after it \(conv1\.bam\)"):
        add_bam(model, x, at=["conv1"])
    plain = add_bam(plain_cnn(), x)
    assert plain.bam_report[0].bam_path == "5_bam"
    with pytest.raises(ValueError, match=r"5 already has a BAM after it \(5_bam\)"):
        add_bam(plain, x, at=["5"])


def test_a_name_twice_in_at_is_an_error():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"at names \['layer1'\] more than once"):
        add_bam(model, torch.randn(2, 3, 64, 64), at=["layer1", "layer1"])
    assert not any(isinstance(m, BAM) for m in model.modules())


def test_a_clash_with_an_existing_child_named_bam_is_an_error():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3, padding=1)
            self.bam = nn.Conv2d(32, 32, 1)  # the user's own, not a torch_bam BAM

        def forward(self, x):
            return self.bam(self.conv(x))

    net = nn.Sequential(Block(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 3))
    # Its parent is a Sequential: BAM goes beside it, under a key of its own.
    add_bam(net, torch.randn(2, 3, 16, 16), at=["0"])
    assert net.bam_report[0].bam_path == "0_bam"
    wrapped = nn.Module()
    wrapped.block = Block()
    wrapped.forward = lambda x: wrapped.block(x)
    with pytest.raises(ValueError, match=r"block has its own child named 'bam'.*block\.bam\.\*"):
        add_bam(wrapped, torch.randn(2, 3, 16, 16), at=["block"])


def test_every_accepted_add_bam_round_trips_through_the_state_dict():
    x = torch.randn(2, 3, 32, 32)

    def build():
        torch.manual_seed(0)
        model = add_bam(torchvision.models.resnet18(), x)
        return add_bam(model, x, at=["conv1", "layer4"]).eval()

    model = build()
    with torch.no_grad():  # move every BAM weight off its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


class _HasChildNamedModule(nn.Module):
    """A block with its own child called ``module`` (as many wrappers have)."""

    def __init__(self):
        super().__init__()
        self.module = nn.Conv2d(16, 32, 3, padding=1)
        self.other = nn.BatchNorm2d(32)

    def forward(self, x):
        return self.other(self.module(x))


class _NetWithWrappedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = _HasChildNamedModule()
        self.head = nn.Conv2d(32, 4, 3, stride=2)

    def forward(self, x):
        return self.head(self.block(self.stem(x))).mean((2, 3))


def test_a_wrapped_module_with_a_child_named_module_loads_its_own_state_back():
    torch.manual_seed(0)
    baseline = _NetWithWrappedBlock()
    net = add_bam(_NetWithWrappedBlock(), torch.randn(2, 3, 16, 16), at=["block"])
    assert type(net.block).__name__ == "BAMAfter"
    assert "block.module.weight" in net.state_dict()  # the block's own child, keys unchanged
    # strict=True: its own state_dict back
    net.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, strict=True)
    # strict=False: a baseline checkpoint loads every baseline weight, the BAM keys missing
    result = net.load_state_dict(baseline.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("block.bam.") for k in result.missing_keys)
    for k, v in baseline.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, msg=k)


@pytest.mark.parametrize("name, at, calls", [("resnet18", "layer1.0.relu", 2),
                                             ("resnet50", "layer1.0.relu", 3)])  # fmt: skip
def test_at_a_module_called_more_than_once_per_forward_is_refused(name, at, calls):
    net = getattr(torchvision.models, name)()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{at} runs {calls} times in one forward"):
        add_bam(net, torch.randn(2, 3, 64, 64), at=[at])
    assert net.state_dict().keys() == before.keys()  # nothing inserted
    net(torch.randn(1, 3, 64, 64))


def test_reduction_ratio_zero_is_a_clear_value_error():
    with pytest.raises(ValueError, match="reduction_ratio must be a positive integer, got 0"):
        add_bam(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64), reduction_ratio=0)


# ---------------------------------------------------------------------------------------------
# BAM's norms follow the backbone's


def _bam_norms(model):
    return [m.norm for m in model.modules() if isinstance(m, BAM)]


def test_frozen_backbone_gets_frozen_bam_norms_and_trains_with_one_image():
    from torchvision.ops import FrozenBatchNorm2d

    model = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    add_bam(model, torch.randn(1, 3, 64, 64))
    assert _bam_norms(model) == ["frozen"] * 3
    assert [p.norm for p in model.bam_report] == ["frozen"] * 3
    assert "frozen" in str(model.bam_report)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(1, 3, 64, 64)).mean().backward()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no stats move
    bam_params = [p for m in model.modules() if isinstance(m, BAM) for p in m.parameters()]
    assert all(p.grad is not None for p in bam_params)


def test_batchnorms_frozen_by_requires_grad_count_as_frozen_and_trainable_ones_do_not():
    model = torchvision.models.resnet18(weights=None)
    add_bam(model, torch.randn(1, 3, 64, 64))
    assert _bam_norms(model) == ["batch"] * 3
    detector_style = torchvision.models.resnet18(weights=None)
    for m in detector_style.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(False)
    add_bam(detector_style, torch.randn(1, 3, 64, 64))
    assert _bam_norms(detector_style) == ["frozen"] * 3
    # Per BAM: frozen only where the stage it follows is (timm's / mmdet's frozen stages).
    partly = torchvision.models.resnet18(weights=None)
    partly.layer1.requires_grad_(False)
    add_bam(partly, torch.randn(1, 3, 64, 64))
    assert _bam_norms(partly) == ["frozen", "batch", "batch"]
    # timm's frozen BatchNorm, in a features_only backbone.
    body = timm.layers.freeze_batch_norm_2d(timm.create_model("resnet18", features_only=True))
    add_bam(body, torch.randn(1, 3, 64, 64))
    assert _bam_norms(body) == ["frozen"] * 3
    # An explicit choice wins.
    chosen = torchvision.models.resnet18(weights=None)
    add_bam(chosen, torch.randn(1, 3, 64, 64), norm="frozen")
    assert _bam_norms(chosen) == ["frozen"] * 3
    with pytest.raises(ValueError, match="unknown norm='auto_'"):
        add_bam(torchvision.models.resnet18(weights=None), norm="auto_")


def test_trainable_backbone_trains_with_one_image():
    model = add_bam(torchvision.models.resnet18(weights=None), torch.randn(1, 3, 64, 64)).train()
    model(torch.randn(1, 3, 64, 64)).mean().backward()
    bam = next(m for m in model.modules() if isinstance(m, BAM))
    assert all(p.grad is not None for p in bam.parameters())


# ---------------------------------------------------------------------------------------------
# Dilated backbones: BAM at the stage ends, as without dilation


@pytest.mark.parametrize(
    "dilation, sizes",
    [
        ([False, False, False], [16, 8, 4]),
        ([False, False, True], [16, 8, 4]),
        ([False, True, True], [16, 8, 8]),
    ],
)
def test_dilated_resnet_gets_bam_at_the_stage_ends(dilation, sizes):
    model = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilation)
    add_bam(model, torch.randn(1, 3, 64, 64))
    assert [p.path for p in model.bam_report] == ["layer1", "layer2", "layer3"]
    assert [p.size[0] for p in model.bam_report] == sizes
    assert [p.channels for p in model.bam_report] == [256, 512, 1024]


def test_deeplab_gets_bam_in_its_backbone_not_in_its_head():
    seg = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=True
    )
    add_bam(seg, torch.randn(1, 3, 64, 64))
    paths = [p.path for p in seg.bam_report]
    assert paths == ["backbone.layer1", "backbone.layer2", "backbone.layer3"]
    seg.train()
    out = seg(torch.randn(2, 3, 64, 64))
    assert out["out"].shape == (2, 21, 64, 64)
    # timm's output_stride: the same stage ends.
    dilated = timm.create_model("resnet18", output_stride=8)
    add_bam(dilated, torch.randn(1, 3, 64, 64))
    assert [p.path for p in dilated.bam_report] == ["layer1", "layer2", "layer3"]


def test_add_bam_keeps_each_modules_own_train_flag():
    # A user freezes the BatchNorm statistics of a model in training mode; add_bam's trace
    # (eval mode) must hand every module back in the mode it had.
    model = torchvision.models.resnet18(weights=None).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    before = {name: m.training for name, m in model.named_modules()}
    add_bam(model, torch.randn(1, 3, 64, 64))
    after = {name: m.training for name, m in model.named_modules() if name in before}
    assert after == before
    # The new BAMs follow the model's own flag (training), as before.
    assert all(m.training for m in model.modules() if isinstance(m, BAM))


# ---------------------------------------------------------------------------------------------
# The forward-pass finder: what used to hide a bottleneck, or fake one


class _Residual(nn.Module):
    """A block: two 3x3 convs and a shortcut (stride 2: a 1x1/2 shortcut)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride > 1 or cin != cout else None

    def forward(self, x):
        s = x if self.short is None else self.short(x)
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + s)


def test_a_container_that_starts_right_before_the_downsampling_hides_nothing():
    # stage1 at 16x16, then a Sequential whose first block downsamples: the container's own
    # start (just before its first block) used to hide stage1 from the finder.
    net = nn.Sequential()
    net.stem = nn.Conv2d(3, 16, 3, 2, 1)
    net.stage1 = _Residual(16, 16)
    net.rest = nn.Sequential(_Residual(16, 32, 2), _Residual(32, 32), _Residual(32, 64, 2))
    add_bam(net, torch.randn(2, 3, 32, 32), reduction_ratio=4)
    assert [(p.path, p.size) for p in net.bam_report] == [("stage1", (16, 16)), ("rest.1", (8, 8))]


class _WindowPartition(nn.Module):
    """A parameter-free reshape of [B, C, H, W] to [B, C, (H/p)*(W/p), p*p] (MaxViT)."""

    def forward(self, x):
        b, c, h, w = x.shape
        p = 4
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(b, c, (h // p) * (w // p), p * p)


class _WindowReverse(nn.Module):
    def forward(self, x):
        b, c, n, pp = x.shape
        side, p = int(n**0.5), int(pp**0.5)
        x = x.reshape(b, c, side, side, p, p).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(b, c, side * p, side * p)


def test_a_reshape_that_trades_height_for_width_is_no_downsampling():
    # 24x24 -> 36x16 (windows of 4x4): H grows while W shrinks; it used to count as a
    # downsampling, and so hid the real one after it.
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1),
        _Residual(16, 16),
        _WindowPartition(),
        _WindowReverse(),
        _Residual(16, 16),
        _Residual(16, 32, 2),
        _Residual(32, 32),
    )
    add_bam(net, torch.randn(2, 3, 48, 48), reduction_ratio=4)
    assert [(p.path, p.size) for p in net.bam_report] == [("4", (24, 24))]


def test_a_head_conv_after_the_last_pool_is_no_stage():
    # timm's VGG head (ConvMlp): a 7x7 conv on the last pooled map. The stage before that
    # pool is the last stage: no BAM after it.
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    add_bam(net, torch.randn(2, 3, 32, 32), reduction_ratio=4)
    assert [(p.path, p.size) for p in net.bam_report] == [("4", (16, 16))]


# ---------------------------------------------------------------------------------------------
# The stem rule, both sides, whatever the nesting


def _deep_stem_net(nested: bool) -> nn.Module:
    stem = [nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU()]
    body = [nn.MaxPool2d(2), _Residual(16, 16), _Residual(16, 32, 2), _Residual(32, 32)]
    net = nn.Sequential()
    if nested:  # stem in a Sequential, stages in a container that starts after it
        net.stem = nn.Sequential(*stem)
        net.stages = nn.Sequential(*body)
    else:
        for i, m in enumerate(stem + body):
            net.add_module(str(i), m)
    return net


@pytest.mark.parametrize("nested", [False, True])
def test_a_deep_stem_gets_no_bam_however_it_is_nested(nested):
    net = add_bam(_deep_stem_net(nested), torch.randn(2, 3, 32, 32), reduction_ratio=4)
    # The stem's stride-1 conv keeps 16x16, yet it runs before the first block: no BAM there.
    assert [p.size for p in net.bam_report] == [(8, 8)]
    assert [p.path for p in net.bam_report] == ["stages.1" if nested else "5"]


@pytest.mark.parametrize("nested", [False, True])
def test_a_block_right_after_the_stem_is_a_stage_however_it_is_nested(nested):
    # The other side of the rule: a stride-1 block at /2 (MobileNetV2, EfficientNet).
    net = nn.Sequential()
    net.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1)) if nested else nn.Conv2d(3, 16, 3, 2, 1)
    net.blocks = nn.Sequential(
        _Residual(16, 16), _Residual(16, 32, 2), _Residual(32, 32), _Residual(32, 64, 2)
    )  # fmt: skip
    add_bam(net, torch.randn(2, 3, 32, 32), reduction_ratio=4)
    assert [(p.path, p.size) for p in net.bam_report] == [
        ("blocks.0", (16, 16)),
        ("blocks.2", (8, 8)),
    ]


# ---------------------------------------------------------------------------------------------
# bottlenecks() and insert_after(): the same places for another attention block


class _SE(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def test_bottlenecks_are_where_add_bam_puts_bam_and_insert_after_takes_any_module():
    from torch_bam.insert import Bottleneck, bottlenecks, insert_after

    x = torch.randn(2, 3, 64, 64)
    places = bottlenecks(torchvision.models.resnet18(), x)
    assert places == [
        Bottleneck("layer1", 64, (16, 16)),
        Bottleneck("layer2", 128, (8, 8)),
        Bottleneck("layer3", 256, (4, 4)),
    ]
    model = add_bam(torchvision.models.resnet18(), x)
    assert [(p.path, p.channels, p.size) for p in model.bam_report] == [tuple(b) for b in places]
    # Any module, under a name of its own: appended, beside, and wrapped, keys unchanged.
    net = torchvision.models.resnet18()
    keys = set(net.state_dict())
    assert insert_after(net, "layer1", _SE(64), name="se") == "layer1.se"
    vgg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    assert insert_after(vgg, "1", _SE(8), name="se") == "1_se"
    assert insert_after(net, "conv1", _SE(64), name="se") == "conv1.se"
    assert keys <= set(net.state_dict())
    assert {k for k in net.state_dict() if ".se." in k} == {
        "layer1.se.fc.weight", "layer1.se.fc.bias", "conv1.se.fc.weight", "conv1.se.fc.bias"
    }  # fmt: skip
    fresh = torchvision.models.resnet18()
    insert_after(fresh, "layer1", _SE(64), name="se")
    insert_after(fresh, "conv1", _SE(64), name="se")
    fresh.load_state_dict(net.state_dict())  # strict: the wrapped keys round-trip
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net.eval()(x))
    with pytest.raises(ValueError, match=r"layer1 already has a _SE after it \(layer1\.se\)"):
        insert_after(net, "layer1", _SE(64), name="se")
