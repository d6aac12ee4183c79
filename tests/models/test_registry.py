"""The model registry."""

import pytest
import torch

import torch_bam
from tests.docs.markdown_blocks import block_after
from torch_bam import BAM


def test_small_models_registered_and_run():
    assert {"small_cnn", "bam_small_cnn"} <= set(torch_bam.list_models())
    base = torch_bam.create_model("small_cnn", num_classes=7)
    bam = torch_bam.create_model("bam_small_cnn", num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    assert base(x).shape == bam(x).shape == (2, 7)
    blocks = [m for m in bam.modules() if isinstance(m, BAM)]
    assert [b.channels for b in blocks] == [32, 64]
    extra = sum(p.numel() for p in bam.parameters()) - sum(p.numel() for p in base.parameters())
    assert extra == sum(p.numel() for b in blocks for p in b.parameters())


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown model 'bam_smal_cnn'.*'bam_small_cnn'"):
        torch_bam.create_model("bam_smal_cnn")


def test_list_models_pattern():
    assert torch_bam.list_models("bam_*") == sorted(
        n for n in torch_bam.list_models() if n.startswith("bam_")
    )


def test_pretrained_true_without_weights_says_so_and_how_to_load_the_official_file():
    with pytest.raises(ValueError, match="no pretrained weights") as error:
        torch_bam.create_model("bam_resnet18", pretrained=True)
    message = str(error.value)
    assert "official_bam_resnet" in message and "load_official_checkpoint" in message
    assert "weights_only=True" in message


def test_pretrained_false_builds_the_model():
    model = torch_bam.create_model("bam_small_cnn", pretrained=False, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_guide_official_checkpoint_snippet_runs(tmp_path, monkeypatch):
    """The guide's snippet (docs/models.md) loads a file laid out as the official
    train_imagenet.py writes it (DataParallel keys, {'state_dict': ..., 'best_prec1': a tensor,
    'optimizer': ...}); random weights stand in for the published ones."""
    from torch import nn

    from tests.helpers import randomize_
    from tests.reference.official_resnet import ResidualNet
    from torch_bam.compat import convert_official_state_dict

    official = randomize_(ResidualNet(50, num_classes=1000), seed=0).eval()
    probe = nn.Linear(1, 1)
    torch.save(
        {
            "epoch": 90,
            "arch": "resnet",
            "state_dict": nn.DataParallel(official).state_dict(),
            "best_prec1": torch.tensor(0.0),
            "optimizer": torch.optim.SGD(probe.parameters(), lr=0.1, momentum=0.9).state_dict(),
        },
        tmp_path / "RESNET50_IMAGENET_BAM_best.pth.tar",
    )
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(block_after("<!-- test: official checkpoint snippet"), scope)
    model = scope["model"]
    assert not model.training
    # The file's weights, every one (output equality: tests/test_compat_official_resnet.py).
    expected = convert_official_state_dict(official.state_dict())
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert {m.combine for m in model.modules() if isinstance(m, BAM)} == {"product"}
    assert model.layer2[0].conv2.stride == (2, 2)  # the stride in the 3x3, as the official code
