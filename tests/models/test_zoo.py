"""Every registered network: runs, trains, traces, and matches the paper's table."""

import importlib.util
from pathlib import Path

import pytest
import torch

import torch_bam
from torch_bam import BAM
from torch_bam.flops import count_macs, count_params
from torch_bam.models._paper import PAPER

ROOT = Path(__file__).resolve().parents[2]
CIFAR = {"cifar_resnet50", "preresnet110", "wrn28_8", "wrn28_10", "resnext29_8x64d"}
NAMES = [n for n in torch_bam.list_models() if "small_cnn" not in n]


def base_name(name):
    return name.removeprefix("bam_")


def small_input(name):
    # Small maps keep this quick; BAM's dilated convs are padded, so any size works.
    size = 16 if base_name(name) in CIFAR else 32
    return torch.randn(2, 3, size, size)


def test_all_paper_networks_registered():
    for base in list(PAPER) + ["resnet34", "resnet152"]:
        assert base in NAMES and f"bam_{base}" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_fx(name):
    torch.manual_seed(0)
    model = torch_bam.create_model(name, num_classes=7)
    bams = [m for m in model.modules() if isinstance(m, BAM)]
    assert bool(bams) == name.startswith("bam_")
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    model.eval()
    with torch.no_grad():
        # Bitwise, as timm's FX test: the graph runs the same modules and ops as eager mode
        # (on CPU in eval the room computes its layers as the modules do).
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))


@pytest.mark.parametrize("name", ["bam_resnet18", "bam_preresnet110", "bam_mobilenet_v1_0_7"])
def test_torchscript(name):
    model = torch_bam.create_model(name).eval()
    x = small_input(name)
    with torch.no_grad():
        ref = model(x)
        # Scripted, BAM's gate runs the reference maths (eager: the fused kernel): they round
        # differently, and the layers after the gate carry that on. A tolerance from float32's
        # epsilon and the logits' magnitude, not from one CPU's rounding.
        eps = torch.finfo(torch.float32).eps
        atol = 100 * eps * float(ref.abs().max())
        torch.testing.assert_close(torch.jit.script(model)(x), ref, rtol=100 * eps, atol=atol)


def test_default_num_classes():
    assert torch_bam.create_model("wrn28_8", num_classes=None).fc.out_features == 100
    assert torch_bam.create_model("resnet18").fc.out_features == 1000


def test_bam_placement_and_cost():
    """ImageNet ResNets: 3 BAMs at 56, 28, 14; CIFAR 3-stage: 2 BAMs; MobileNet: 4."""
    cases = {
        "bam_resnet50": (224, [(256, 56), (512, 28), (1024, 14)]),
        "bam_preresnet110": (32, [(16, 32), (32, 16)]),
        "bam_wrn28_10": (32, [(160, 32), (320, 16)]),
        "bam_mobilenet_v1": (224, [(64, 112), (128, 56), (256, 28), (512, 14)]),
    }
    for name, (size, expected) in cases.items():
        with torch.device("meta"):
            model = torch_bam.create_model(name)
            base = torch_bam.create_model(base_name(name))
        seen = []
        for b in (m for m in model.modules() if isinstance(m, BAM)):
            b.register_forward_hook(lambda m, i, o, seen=seen: seen.append(tuple(o.shape[1:3])))
        model.eval()(torch.zeros(1, 3, size, size, device="meta"))
        assert seen == expected, name
        bam_params = sum(count_params(m) for m in model.modules() if isinstance(m, BAM))
        assert count_params(model) - count_params(base) == bam_params


def test_v1_and_v1_5():
    with torch.device("meta"):
        v1 = torch_bam.create_model("resnet50")
        v15 = torch_bam.create_model("resnet50", stride_in_3x3=True)
    assert v1.layer2[0].conv1.stride == (2, 2) and v15.layer2[0].conv2.stride == (2, 2)
    assert round(count_macs(v1) / 1e9, 2) == 3.86
    assert round(count_macs(v15) / 1e9, 2) == 4.09


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_tables", ROOT / "scripts/paper_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def paper_tables():
    return _load_script()


def test_params_and_gflops_match_the_paper(paper_tables):
    rows = paper_tables.rows()
    assert len(rows) == 2 * len(PAPER)
    for r in rows:
        assert abs(r["params"] - r["paper_params"]) <= 0.01 + 1e-9, r
        assert abs(r["gmacs"] - r["paper_gmacs"]) <= 0.01 + 1e-9, r


def test_committed_tables_are_current(paper_tables):
    assert paper_tables.OUT.read_text() == paper_tables.render(), (
        "docs/paper_tables.md is out of date: run python scripts/paper_tables.py"
    )
