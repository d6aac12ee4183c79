"""add_bam on a zoo of timm and torchvision CNNs: how many BAMs, and where.

Random weights on the meta device (no memory, no arithmetic: shapes only), so the whole sweep
takes seconds. Each network's BAMs are checked against a written table, and for timm networks
against the model's own ``feature_info``: the BAMs sit at its levels ``first..stop-1`` (the
levels before ``first`` are the stem; the last level gets none), with the level's module,
channels and reduction.
"""

import pytest
import torch

from torch_bam import BAM, add_bam

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

# name: (input size, [(path, channels, map side)], feature_info levels with a BAM or None)
ZOO = {
    # Deep stems (three 3x3 convs in a plain Sequential, then a max-pool): stem, no BAM in it.
    "resnet26d": (64, [("layer1", 256, 16), ("layer2", 512, 8), ("layer3", 1024, 4)], (1, 4)),
    "resnest14d": (64, [("layer1", 256, 16), ("layer2", 512, 8), ("layer3", 1024, 4)], (1, 4)),
    "nfnet_l0": (64, [("stages.0", 256, 16), ("stages.1", 512, 8), ("stages.2", 1536, 4)], (1, 4)),
    "vovnet39a": (64, [("stages.0", 256, 16), ("stages.1", 512, 8), ("stages.2", 768, 4)], (1, 4)),
    # Fixed input size (self-attention position tables).
    "botnet26t_256": (
        256,
        [("stages.0", 256, 64), ("stages.1", 512, 32), ("stages.2", 1024, 16)],
        (1, 4),
    ),
    # Inception stems (single conv-norm-act layers and pools): no BAM before the first
    # Inception module; none after the last stage. Valid convs: sizes are not /2 exactly.
    "inception_v3": (299, [("Mixed_5d", 288, 35), ("Mixed_6e", 768, 17)], None),
    "inception_v4": (299, [("features.9", 384, 35), ("features.17", 1024, 17)], None),
    # Stem: one 3x3/1 conv at full size; each stage starts with its own strided conv.
    "darknet53": (
        64,
        [("stages.0", 64, 32), ("stages.1", 128, 16), ("stages.2", 256, 8), ("stages.3", 512, 4)],
        (1, 5),
    ),
    "cspdarknet53": (
        64,
        [("stages.0", 64, 32), ("stages.1", 128, 16), ("stages.2", 256, 8), ("stages.3", 512, 4)],
        (1, 5),
    ),
    "cspresnet50": (
        64,
        [("stages.0", 128, 16), ("stages.1", 256, 8), ("stages.2", 512, 4)],
        (1, 4),
    ),
    # Stems that hold small blocks but that the model names as its stem (group_matcher).
    "efficientvit_b0": (
        64,
        [("stages.0", 16, 16), ("stages.1", 32, 8), ("stages.2", 64, 4)],
        (0, 3),
    ),
    "coatnet_nano_rw_224": (
        224,
        [("stages.0", 64, 56), ("stages.1", 128, 28), ("stages.2", 256, 14)],
        (1, 4),
    ),
    "maxvit_pico_rw_256": (
        256,
        [("stages.0", 32, 64), ("stages.1", 64, 32), ("stages.2", 128, 16)],
        (1, 4),
    ),
    # timm describes each level inside the block that downsamples, before its strided conv.
    "xception41": (
        64,
        [
            ("blocks.0.stack.act3", 128, 32),
            ("blocks.1.stack.act3", 256, 16),
            ("blocks.2.stack.act3", 728, 8),
            ("blocks.11.stack.act3", 1024, 4),
        ],
        (0, 4),
    ),
    "xception41p": (
        64,
        [
            ("blocks.0.stack.conv2", 128, 32),
            ("blocks.1.stack.conv2", 256, 16),
            ("blocks.2.stack.conv2", 728, 8),
            ("blocks.11.stack.conv2", 1024, 4),
        ],
        (0, 4),
    ),
    # Lists of maps between stages: after layer1 (before transition1's strided branch),
    # and after each module's high-resolution branch, which its fuse layers downsample. The
    # lower branches' downsamplings follow one another in the fuse layers with no stage between.
    "hrnet_w18_small": (
        64,
        [
            ("layer1", 128, 16),
            ("stage2.0.branches.0", 16, 16),
            ("stage3.0.branches.0", 16, 16),
            ("stage4.0.branches.0", 16, 16),
        ],
        None,
    ),
    "hrnet_w18_small_v2": (
        64,
        [
            ("layer1", 256, 16),
            ("stage2.0.branches.0", 18, 16),
            ("stage3.0.branches.0", 18, 16),
            ("stage3.1.branches.0", 18, 16),
            ("stage3.2.branches.0", 18, 16),
            ("stage4.0.branches.0", 18, 16),
            ("stage4.1.branches.0", 18, 16),
        ],
        None,
    ),
    # Blocks take and return lists: after the layer that makes the first map of the list.
    "selecsls42b": (
        64,
        [("features.1.conv6", 128, 16), ("features.3.conv6", 288, 8), ("from_seq", 480, 4)],
        None,
    ),
    # No block: the first conv is the stem. The 7x7 ConvMlp head after the last pool is no
    # stage, so the last stage (features.19) gets none.
    "vgg11": (
        64,
        [("features.4", 128, 32), ("features.9", 256, 16), ("features.14", 512, 8)],
        (1, 4),
    ),
    "vgg11_bn": (
        64,
        [("features.6", 128, 32), ("features.13", 256, 16), ("features.20", 512, 8)],
        (1, 4),
    ),
    # Space-to-depth first: the first conv sees 48 channels, the model takes 3.
    "tresnet_m": (
        64,
        [("body.layer1", 64, 16), ("body.layer2", 128, 8), ("body.layer3", 1024, 4)],
        (1, 4),
    ),
    # A stride-1 block at /2 after the stem conv: a stage, as in the paper's MobileNet.
    "mobilenetv2_050": (
        64,
        [("blocks.0", 8, 32), ("blocks.1", 16, 16), ("blocks.2", 16, 8), ("blocks.4", 48, 4)],
        (0, 4),
    ),
    # Stem conv straight into a stride-2 block: nothing at /2.
    "mobilenetv3_small_050": (
        64,
        [("blocks.0", 8, 16), ("blocks.1", 16, 8), ("blocks.3", 24, 4)],
        (1, 4),
    ),
    "efficientnet_b0": (
        64,
        [("blocks.0", 16, 32), ("blocks.1", 24, 16), ("blocks.2", 40, 8), ("blocks.4", 112, 4)],
        (0, 4),
    ),
    "convnext_atto": (
        64,
        [("stages.0", 40, 16), ("stages.1", 80, 8), ("stages.2", 160, 4)],
        (0, 3),
    ),
    "regnetx_002": (64, [("s1", 24, 16), ("s2", 56, 8), ("s3", 152, 4)], (1, 4)),
    # level0 and level1 are single convs in plain Sequentials: stem, with base_layer.
    "dla34": (64, [("level2", 64, 16), ("level3", 128, 8), ("level4", 256, 4)], (2, 5)),
    # feature_info names the first block at each size (blocks.1); BAM goes after the last
    # one before the next downsampling (blocks.2).
    "ghostnet_050": (64, [("blocks.2", 12, 16), ("blocks.4", 20, 8), ("blocks.6", 56, 4)], None),
    "rexnet_100": (
        64,
        [
            ("features.0", 16, 32),
            ("features.2", 38, 16),
            ("features.4", 61, 8),
            ("features.10", 128, 4),
        ],
        (0, 4),
    ),
    "dpn68": (
        64,
        [
            ("features.conv2_3", 144, 16),
            ("features.conv3_4", 320, 8),
            ("features.conv4_12", 704, 4),
        ],
        (1, 4),
    ),
    "repvgg_a0": (64, [("stages.0", 48, 16), ("stages.1", 96, 8), ("stages.2", 192, 4)], (1, 4)),
    "mnasnet_050": (
        64,
        [("blocks.0", 8, 32), ("blocks.1", 16, 16), ("blocks.2", 24, 8), ("blocks.4", 48, 4)],
        (0, 4),
    ),
    "gernet_s": (64, [("stages.0", 48, 16), ("stages.1", 48, 8), ("stages.2", 384, 4)], (1, 4)),
    # torchvision: no description, the forward-pass finder.
    "tv_regnet_x_400mf": (
        64,
        [
            ("trunk_output.block1", 32, 16),
            ("trunk_output.block2", 64, 8),
            ("trunk_output.block3", 160, 4),
        ],
        None,
    ),
    "tv_densenet121": (
        64,
        [
            ("features.denseblock1", 256, 16),
            ("features.denseblock2", 512, 8),
            ("features.denseblock3", 1024, 4),
        ],
        None,
    ),
    # torchvision's MnasNet flattens its first separable conv into plain layers: stem.
    "tv_mnasnet0_5": (64, [("layers.8", 16, 16), ("layers.9", 24, 8), ("layers.11", 48, 4)], None),
    "tv_squeezenet1_0": (64, [("features.5", 256, 14), ("features.10", 512, 7)], None),
    "tv_googlenet": (64, [("inception3b", 480, 8), ("inception4e", 832, 4)], None),
    "tv_inception_v3": (299, [("Mixed_5d", 288, 35), ("Mixed_6e", 768, 17)], None),
    # Window partitions reshape 56x56 to 64x49: no downsampling. Fixed input size.
    "tv_maxvit_t": (
        224,
        [("blocks.0", 64, 56), ("blocks.1", 128, 28), ("blocks.2", 256, 14)],
        None,
    ),
    "tv_mobilenet_v3_large": (
        64,
        [
            ("features.1", 16, 32),
            ("features.3", 24, 16),
            ("features.6", 40, 8),
            ("features.12", 112, 4),
        ],
        None,
    ),
    # Its /2 stage is single-conv blocks (FusedMBConv, expansion 1): no block, stem.
    "tv_efficientnet_v2_s": (
        64,
        [("features.2", 48, 16), ("features.3", 64, 8), ("features.5", 160, 4)],
        None,
    ),
    "tv_alexnet": (64, [("features.4", 192, 7)], None),
}

ON_CPU = {"tv_regnet_x_400mf"}  # its builder computes widths from tensor values
INIT_WEIGHTS = {"tv_googlenet", "tv_inception_v3"}  # (say so, or they warn about a change)


def build(name):
    with torch.device("cpu" if name in ON_CPU else "meta"):
        if name.startswith("tv_"):
            kwargs = {"init_weights": False} if name in INIT_WEIGHTS else {}
            return getattr(torchvision.models, name[3:])(**kwargs)
        return timm.create_model(name, pretrained=False)


@pytest.mark.parametrize("name", list(ZOO))
def test_bam_count_and_place(name):
    size, expected, levels = ZOO[name]
    model = build(name)
    device = next(model.parameters()).device
    x = torch.randn(2, 3, size, size, device=device)
    add_bam(model, x, reduction_ratio=4)
    assert [(p.path, p.channels, p.size) for p in model.bam_report] == [
        (path, c, (s, s)) for path, c, s in expected
    ]
    # The BAMs are in the model, each on the map the report names (a training forward).
    bams = [m for m in model.modules() if isinstance(m, BAM)]
    seen = []
    for b in bams:
        b.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    model(x)
    assert sorted(seen) == sorted((c, s, s) for _, c, s in expected)
    if levels is not None:  # the model's own description of its stages
        info = model.feature_info[levels[0] : levels[1]]
        assert [d["module"] for d in info] == [path for path, _, _ in expected]
        assert [d["num_chs"] for d in info] == [c for _, c, _ in expected]
        assert [d["reduction"] for d in info] == [size // s for _, _, s in expected]


def test_one_line_call_takes_the_models_own_input_channels():
    # TResNet's first conv sees 48 channels (after space-to-depth); the model takes 3.
    with torch.device("meta"):
        model = timm.create_model("tresnet_m", pretrained=False)
    add_bam(model)
    assert [p.path for p in model.bam_report] == ["body.layer1", "body.layer2", "body.layer3"]


def test_fixed_input_size_models_get_their_own_size_by_default():
    with torch.device("meta"):
        model = timm.create_model("coatnet_nano_rw_224", pretrained=False)
    add_bam(model)  # 128x128 would not fit its position tables
    assert [p.size for p in model.bam_report] == [(56, 56), (28, 28), (14, 14)]


def test_features_only_networks_follow_their_description():
    # timm's FeatureListNet keeps every level's description; the levels it cut off are gone.
    with torch.device("meta"):
        full = timm.create_model("resnet18", features_only=True)
        cut = timm.create_model("resnet18", features_only=True, out_indices=(1, 2))
    x = torch.randn(1, 3, 64, 64, device="meta")
    assert [p.path for p in add_bam(full, x).bam_report] == ["layer1", "layer2", "layer3"]
    assert [p.path for p in add_bam(cut, x).bam_report] == ["layer1"]  # layer2 is its last
