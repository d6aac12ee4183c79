"""SE, ECA and CBAM come from timm, go where their papers put them, and their cost is counted."""

import pytest
import torch
from torch import nn

from torch_bam import BAM, add_bam, create_model
from torch_bam.flops import count_params
from torch_bam.peers import add_attention, added_cost, attention_module, attention_variants

timm = pytest.importorskip("timm")
from timm.layers.cbam import CbamModule  # noqa: E402
from timm.layers.eca import EcaModule  # noqa: E402
from timm.layers.squeeze_excite import SEModule  # noqa: E402

CLASSES = {"se": SEModule, "eca": EcaModule, "cbam": CbamModule}


@pytest.mark.parametrize("kind", CLASSES)
def test_peers_are_timms_modules_in_every_block_as_in_timms_resnet(kind):
    ours = create_model("resnet18", num_classes=10, block_args=dict(attn_layer=kind))
    theirs = timm.create_model("resnet18", num_classes=10, block_args=dict(attn_layer=kind))
    blocks = [m for name, m in ours.named_modules() if name.count(".") == 1 and "layer" in name]
    assert len(blocks) == 8 and all(type(b.se) is CLASSES[kind] for b in blocks)
    # The same modules of the same widths: the same parameters added as in timm's ResNet-18.
    added = count_params(ours) - count_params(create_model("resnet18", num_classes=10))
    assert added == count_params(theirs) - count_params(
        timm.create_model("resnet18", num_classes=10)
    )
    assert added > 0


def test_the_block_applies_it_on_the_residual_branch():
    block = create_model("resnet18", block_args=dict(attn_layer="se")).eval().layer2[0]
    x = torch.randn(2, 64, 8, 8)
    out = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    expected = torch.relu(block.se(out) + block.downsample(x))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_cifar_networks_take_block_args():
    model = create_model("preresnet110", block_args=dict(attn_layer="eca"))
    assert sum(isinstance(m, EcaModule) for m in model.modules()) == 54
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("kind", ["se", "cbam", "eca", "bam"])
def test_add_attention_at_the_bottlenecks_is_where_add_bam_puts_bam(kind):
    x = torch.randn(2, 3, 32, 32)
    reference = add_bam(create_model("small_cnn"), x)
    model = add_attention(create_model("small_cnn"), kind, example_input=x)
    # The same places, each module under its own name (layer1.se where BAM is layer1.bam).
    expected = [r.bam_path[: -len("bam")] + kind for r in reference.bam_report]
    assert [p for p, _ in model.attention_report] == expected
    cls = CLASSES.get(kind, BAM)
    assert sum(isinstance(m, cls) for m in model.modules()) == len(reference.bam_report)
    assert model(x).shape == (2, 10)


def test_block_placement_and_added_cost():
    base = create_model("small_cnn")
    model = add_attention(create_model("small_cnn"), "cbam", "block")
    assert [c for _, c in model.attention_report] == [32, 64, 128]
    cost = added_cost(base, model, (1, 3, 32, 32))
    modules = [m for m in model.modules() if isinstance(m, CbamModule)]
    assert cost["params"] == sum(count_params(m) for m in modules) > 0
    assert cost["macs"] > 0


def test_variants_and_bad_kinds():
    variants = attention_variants()
    for name in ("none", "bam", "se", "cbam", "eca", "bam-channel", "bam-spatial"):
        assert name in variants
    assert variants["bam-spatial"].kwargs == {"attention": "spatial"}
    with pytest.raises(ValueError, match="se, eca, cbam"):
        attention_module("gc", 8)
    with pytest.raises(ValueError, match="'bottleneck' or 'block'"):
        add_attention(nn.Sequential(nn.Conv2d(3, 8, 3)), "se", placement="everywhere")
